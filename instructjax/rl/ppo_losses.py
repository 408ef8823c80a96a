"""PPO losses (Schulman et al. 2017; docs/formulas.md#ppo-policy-loss, #ppo-value-loss) and the diagnostics
logged with them (#ppo-diagnostics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.rl.advantages import masked_mean, masked_var


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip_eps: float = 0.2) -> tuple[jax.Array, dict]:
    """Clipped surrogate: mean over valid tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Returns (loss, {"ratio", "approx_kl" = 0.5 mean(dlogp^2), "clip_frac"}) all means over valid tokens.
    """
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    stats = {"ratio": masked_mean(ratio, mask), "approx_kl": 0.5 * masked_mean(jnp.square(log_ratio), mask),
             "clip_frac": masked_mean((clipped > unclipped).astype(jnp.float32), mask)}
    return loss, stats


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip_range: float = 0.2) -> tuple[jax.Array, dict]:
    """0.5 * mean over valid tokens of max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -c, c)."""
    clipped_values = old_values + jnp.clip(values - old_values, -clip_range, clip_range)
    unclipped_loss = jnp.square(values - returns)
    clipped_loss = jnp.square(clipped_values - returns)
    loss = 0.5 * masked_mean(jnp.maximum(unclipped_loss, clipped_loss), mask)
    return loss, {"value_clip_frac": masked_mean((clipped_loss > unclipped_loss).astype(jnp.float32), mask)}


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var(R - V) / Var(R) over valid tokens (1: the value model predicts the returns perfectly)."""
    return 1.0 - masked_var(returns - values, mask) / jnp.maximum(masked_var(returns, mask), 1e-8)


def entropy_from_logits(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """[B, T, V] -> [B, T]: entropy of softmax(logits / T)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
