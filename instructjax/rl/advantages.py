"""GAE as a reverse scan, and masked whitening (RLHF.md items 17-18)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over [B, T]; the value after the last valid token is 0.

    Returns (advantages, returns), both 0 where mask is False; returns = advantages + values.
    """
    mask = mask.astype(bool)
    rewards = jnp.where(mask, rewards, 0.0).astype(jnp.float32)
    values = jnp.where(mask, values, 0.0).astype(jnp.float32)

    def step(carry, xs):
        next_advantage, next_value = carry
        reward, value, valid = xs
        delta = reward + gamma * next_value - value
        advantage = jnp.where(valid, delta + gamma * lam * next_advantage, 0.0)
        return (advantage, value), advantage

    init = (jnp.zeros(rewards.shape[0]), jnp.zeros(rewards.shape[0]))
    _, advantages = jax.lax.scan(step, init, (rewards.T, values.T, mask.T), reverse=True)
    advantages = advantages.T
    return advantages, jnp.where(mask, advantages + values, 0.0)


def masked_mean(x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    if mask is None:
        return jnp.mean(x)
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_var(x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Population (biased) variance over the masked entries."""
    return masked_mean(jnp.square(x - masked_mean(x, mask)), mask)


def whiten(x: jax.Array, mask: Optional[jax.Array] = None, shift_mean: bool = True) -> jax.Array:
    """(x - mean) * rsqrt(var + 1e-8) over valid entries; shift_mean=False adds the mean back."""
    mean = masked_mean(x, mask)
    out = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + 1e-8)
    if not shift_mean:
        out = out + mean
    return out if mask is None else jnp.where(mask, out, 0.0)
