"""The reward-model training objective: InstructGPT eq. 1 over each prompt's K completions.

In the shared train step's form (`instructjax.train.step`): the loss is summed over prompts and
weighted by the number of prompts with at least one ordered pair, so that gradient accumulation
over microbatches equals one pass over the whole batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from instructjax import losses
from instructjax.models import ModelConfig
from instructjax.rewards.scoring import completion_scores


@dataclasses.dataclass(frozen=True)
class RewardLossConfig:
    """Options of the pairwise ranking loss (docs/formulas.md#ranking-loss-options)."""

    margin: float = 0.0  # m in -log sigmoid(r_w - r_l - m); 0 is InstructGPT
    center_coef: float = 0.0  # c in + c * mean(r^2) over a prompt's valid completions (0.01 when used); 0: off


def ranking_loss_sums(scores: jax.Array, ranks: jax.Array, valid: jax.Array,
                      options: RewardLossConfig = RewardLossConfig()) -> tuple[jax.Array, dict]:
    """(loss summed over prompts, aux) of scores [B, K]: each prompt's eq. 1 loss (its mean over its
    ordered pairs, + centering of its completions), aux = {"weight": prompts with a pair, "totals"}."""
    valid = valid.astype(bool)
    per_prompt = jax.vmap(lambda s, r, v: losses.pairwise_ranking_loss(
        s[None], r[None], v[None], margin=options.margin, center_coef=options.center_coef))(scores, ranks, valid)
    pairs = losses.ordered_pair_mask(ranks, valid)
    has_pairs = jnp.any(pairs, axis=(1, 2))
    correct = pairs & (scores[:, :, None] > scores[:, None, :])
    valid_scores = jnp.where(valid, scores, 0.0)
    totals = {
        "prompts": jnp.sum(has_pairs, dtype=jnp.int32),
        "completions": jnp.sum(valid, dtype=jnp.int32),
        "pairs": jnp.sum(pairs, dtype=jnp.int32),
        "correct_pairs": jnp.sum(correct, dtype=jnp.int32),
        "score_sum": jnp.sum(valid_scores),
        "score_sq_sum": jnp.sum(jnp.square(valid_scores)),
    }
    loss_sum = jnp.sum(jnp.where(has_pairs, per_prompt, 0.0))
    return loss_sum, {"weight": totals["prompts"], "totals": totals}


def reward_loss_fn(cfg: ModelConfig, options: RewardLossConfig = RewardLossConfig()):
    """`loss_fn(params, batch, rng) -> (loss_sum, aux)` for `train.step.make_train_step`: the K
    completions of each prompt (`tokens`, `attention_mask` [B, K, T]) scored in ONE forward of batch
    B * K, then `ranking_loss_sums`. The rng is unused: dropout stays off (docs/formulas.md#dropout-off)."""
    def loss_fn(params: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        del rng
        scores = completion_scores(cfg, params, batch["tokens"], batch["attention_mask"])
        return ranking_loss_sums(scores, batch["ranks"], batch["valid"], options)
    return loss_fn


def derived_metrics(totals: dict) -> dict:
    """Pairwise accuracy and the score mean / std from the summed counts of `ranking_loss_sums`."""
    n = jnp.maximum(totals["completions"], 1).astype(jnp.float32)
    mean = totals["score_sum"] / n
    return {"accuracy": totals["correct_pairs"] / jnp.maximum(totals["pairs"], 1).astype(jnp.float32),
            "score_mean": mean, "score_std": jnp.sqrt(jnp.maximum(totals["score_sq_sum"] / n - mean ** 2, 0.0))}

