"""A value head on the policy trunk (Ziegler et al. 2019; docs/formulas.md#value-model): one network, two heads."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models import ModelConfig
from instructjax.rewards.scoring import init_score_head

VALUE_HEAD = "score_head"  # params key of a value head on the policy trunk (the name a scalar Transformer uses)


def add_value_head(cfg: ModelConfig, lm_params: dict, rng: Optional[jax.Array] = None) -> dict:
    """Policy params with a fresh scalar value head on the trunk: zero (it predicts 0 everywhere until it
    learns, so the first advantages are sums of the rewards ahead, not a random projection of the hidden states;
    docs/gold_reward.md), or random from `rng` as a reward model's score head starts.
    The LM ignores the head's params, so sampling and PPO-ptx take these params as they are."""
    if rng is not None:
        return {**lm_params, VALUE_HEAD: init_score_head(cfg, rng)}
    dtype = jnp.dtype(cfg.param_dtype)
    return {**lm_params, VALUE_HEAD: {"kernel": np.zeros((cfg.d_model, 1), dtype), "bias": np.zeros((1,), dtype)}}


def lm_params(params: dict) -> dict:
    """The language model of policy params, without a value head (for export)."""
    return {k: v for k, v in params.items() if k != VALUE_HEAD}
