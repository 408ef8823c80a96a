"""Losses: token log-probabilities (SFT, PPO-ptx, DPO), the pairwise ranking loss (reward model) and
the DPO / IPO preference losses."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["pairwise_ranking_loss", "dpo_loss"]  # the rest: `from instructjax.losses import name`


def token_logprobs(logits: jax.Array, targets: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log_softmax(logits / T) gathered at targets: [B, T, V], [B, T] -> [B, T] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def next_token_targets(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(targets, target mask) aligned with the logits of rows [..., T]: position i predicts token i + 1
    (docs/formulas.md#token-alignment), so `mask` moves one to the left; the last position predicts nothing."""
    def shift(x: jax.Array) -> jax.Array:
        return jnp.concatenate([x[..., 1:], jnp.zeros_like(x[..., :1])], axis=-1)
    return shift(tokens), shift(mask)


def sequence_logprobs(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [...]: sum of log p(token_i | tokens_<i) over the tokens where `mask` [..., T] is True
    (e.g. a response and its EOS), read from `logits` [..., T, V] of the same rows."""
    targets, target_mask = next_token_targets(tokens, mask)
    return jnp.sum(jnp.where(target_mask, token_logprobs(logits, targets), 0.0), axis=-1)


def ordered_pair_mask(ranks: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """bool [..., K, K]: entry (w, l) is True when completion w is ranked strictly better than l (both valid).
    Ties give no pair; K distinct ranks give K(K-1)/2 pairs. Works on numpy and jax arrays."""
    if valid is None:
        valid = np.ones(ranks.shape, bool)
    both = valid[..., :, None] & valid[..., None, :]
    return both & (ranks[..., :, None] < ranks[..., None, :])


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


PREFERENCE_LOSSES = ("dpo", "ipo")


def dpo_pair_losses(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array,
                    ref_rejected: jax.Array, beta: float = 0.1, kind: str = "dpo") -> jax.Array:
    """The loss of each pair (any shape) of summed response logprobs (docs/formulas.md#dpo), with
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected):
    "dpo": -log sigmoid(beta * h) (Rafailov et al. 2023); "ipo": (h - 1 / (2 beta))^2 (Azar et al. 2023)."""
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"kind={kind!r}: expected one of {PREFERENCE_LOSSES}")
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "dpo":
        return -jax.nn.log_sigmoid(beta * h)
    return jnp.square(h - 1.0 / (2.0 * beta))


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float = 0.1, kind: str = "dpo") -> jax.Array:
    """DPO or IPO loss of N pairs: the mean over pairs of `dpo_pair_losses`; inputs are the summed
    response logprobs [N] of the chosen and rejected responses under the policy and the reference.
    Check (docs/formulas.md#dpo): -10, -12, -11, -11, beta 0.1 give h = 2, DPO 0.598139, IPO 9.0."""
    return jnp.mean(dpo_pair_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, kind))
