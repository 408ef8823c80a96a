"""GAE as a reverse scan, masked whitening and group baselines (docs/formulas.md#gae, #whitening,
#group-advantages)."""

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


def _groups(rewards: jax.Array, group_size: int) -> jax.Array:
    """rewards [B] as [B / group_size, group_size]; each group's rows are consecutive."""
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of group_size={group_size} (>= 2)")
    return rewards.astype(jnp.float32).reshape(-1, group_size)


def group_advantages(rewards: jax.Array, group_size: int, scale: bool = True, eps: float = 1e-6) -> jax.Array:
    """float32 [B]: each reward minus its group's mean, divided by the group's sample standard deviation
    (ddof 1) + eps (GRPO, Shao et al. 2024); `scale=False`: not divided (Dr.GRPO, Liu et al. 2025).
    A group of equal rewards gives zeros."""
    groups = _groups(rewards, group_size)
    centred = groups - jnp.mean(groups, axis=-1, keepdims=True)
    if scale:
        centred = centred / (jnp.std(groups, axis=-1, ddof=1, keepdims=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """float32 [B]: each reward minus the mean of the other rewards of its group (REINFORCE leave-one-out,
    Ahmadian et al. 2024)."""
    groups = _groups(rewards, group_size)
    others = (jnp.sum(groups, axis=-1, keepdims=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)
