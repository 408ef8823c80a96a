"""Losses: token cross-entropy (SFT, PPO-ptx) and the pairwise ranking loss (reward model)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log_softmax(logits / T) gathered at targets: [B, T, V], [B, T] -> [B, T] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def token_cross_entropy(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the tokens where loss_mask is True (docs/formulas.md#sft-loss)."""
    nll = -token_logprobs(logits, targets)
    mask = loss_mask.astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def ordered_pair_mask(ranks: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """bool [B, K, K]: entry (w, l) is True when completion w is ranked strictly better than l."""
    if valid is None:
        valid = jnp.ones(ranks.shape, bool)
    both = valid[:, :, None] & valid[:, None, :]
    return both & (ranks[:, :, None] < ranks[:, None, :])


def pairwise_ranking_loss(scores: jax.Array, ranks: jax.Array, valid: Optional[jax.Array] = None, *,
                          margin: float = 0.0, center_coef: float = 0.0) -> jax.Array:
    """InstructGPT eq. 1: per prompt the mean of -log sigmoid(r_w - r_l - margin) over its ordered pairs
    (ties dropped), then the mean over prompts with at least one pair; plus center_coef * mean(r^2)."""
    pairs = ordered_pair_mask(ranks, valid)
    scores = scores.astype(jnp.float32)
    diff = scores[:, :, None] - scores[:, None, :] - margin
    per_pair = jnp.where(pairs, -jax.nn.log_sigmoid(diff), 0.0)
    n_pairs = jnp.sum(pairs, axis=(1, 2))
    per_prompt = jnp.sum(per_pair, axis=(1, 2)) / jnp.maximum(n_pairs, 1)
    has_pairs = n_pairs > 0
    loss = jnp.sum(jnp.where(has_pairs, per_prompt, 0.0)) / jnp.maximum(jnp.sum(has_pairs), 1)
    if center_coef:
        valid_f = jnp.ones_like(scores) if valid is None else valid.astype(jnp.float32)
        loss = loss + center_coef * jnp.sum(scores ** 2 * valid_f) / jnp.maximum(jnp.sum(valid_f), 1.0)
    return loss


def pairwise_accuracy(scores: jax.Array, ranks: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """Fraction of ordered pairs (w better than l) with r_w > r_l (docs/formulas.md#pairwise-accuracy)."""
    pairs = ordered_pair_mask(ranks, valid)
    correct = pairs & (scores[:, :, None] > scores[:, None, :])
    return jnp.sum(correct) / jnp.maximum(jnp.sum(pairs), 1)
