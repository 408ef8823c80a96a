"""Reward sources computed inside the scorer's jit (`make_scorer`'s `reward_fn`): the reward model's score,
and a synthetic token count for tests and demos."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from instructjax.models import ModelConfig
from instructjax.rewards.scoring import sequence_scores

# reward_fn(reward_params, tokens [B, P+N], attention_mask [B, P+N], response_mask [B, N]) -> scores [B]
RewardFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def reward_model_fn(cfg: ModelConfig) -> RewardFn:
    """The reward model's score at the last real token of prompt + response (EOS when present)."""
    def reward_fn(params, tokens, attention_mask, response_mask):
        del response_mask
        return sequence_scores(cfg, params, tokens, attention_mask)
    return reward_fn


def token_count_reward(token_id: int) -> RewardFn:
    """A synthetic reward for tests and demos: how often `token_id` appears in the valid response."""
    def reward_fn(params, tokens, attention_mask, response_mask):
        del params, attention_mask
        response = tokens[:, -response_mask.shape[1]:]
        return jnp.sum((response == token_id) & response_mask, axis=-1).astype(jnp.float32)
    return reward_fn
