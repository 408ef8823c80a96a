"""Per-token PPO rewards: the no-EOS penalty, the KL term and the score at the last valid token
(docs/formulas.md#no-eos-penalty, #token-rewards)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.rl.kl import kl_penalty


def no_eos_penalty(scores: jax.Array, ended: jax.Array, penalty: float = 1.0) -> jax.Array:
    """Scores [B] of responses that never produced EOS within the budget lowered by `penalty`
    (docs/formulas.md#no-eos-penalty, default score - 1.0)."""
    return jnp.where(ended, scores, scores - penalty)


def last_valid_index(mask: jax.Array) -> jax.Array:
    """int32 [B]: index of the last True of each row of a right-padded mask [B, T] (0 for an empty row)."""
    return jnp.maximum(jnp.sum(mask, axis=-1, dtype=jnp.int32) - 1, 0)


def token_rewards(scores: jax.Array, logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
                  kl_coef: jax.Array | float, kind: str = "k1") -> tuple[jax.Array, jax.Array]:
    """(rewards [B, T], kl [B, T]): r_t = -beta * kl_t on valid tokens, plus the score at the last
    valid token (docs/formulas.md#token-rewards); 0 after EOS. `mask` is right-aligned response
    validity (True up to EOS)."""
    mask = mask.astype(bool)
    kl = jnp.where(mask, kl_penalty(logprobs, ref_logprobs, kind), 0.0)
    rewards = -kl_coef * kl
    last = jax.nn.one_hot(last_valid_index(mask), mask.shape[-1], dtype=rewards.dtype)
    rewards = rewards + last * scores[:, None] * jnp.any(mask, axis=-1, keepdims=True)
    return jnp.where(mask, rewards, 0.0), kl
