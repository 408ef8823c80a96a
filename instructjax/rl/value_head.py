"""A value head on the policy trunk (Ziegler et al. 2019; docs/formulas.md#value-model): one network, two heads."""

from __future__ import annotations

import jax

from instructjax.models import ModelConfig
from instructjax.rewards.scoring import init_score_head

VALUE_HEAD = "score_head"  # params key of a value head on the policy trunk (the name a scalar Transformer uses)


def add_value_head(cfg: ModelConfig, lm_params: dict, rng: jax.Array) -> dict:
    """Policy params with a fresh scalar value head on the trunk.
    The LM ignores the head's params, so sampling and PPO-ptx take these params as they are."""
    return {**lm_params, VALUE_HEAD: init_score_head(cfg, rng)}


def lm_params(params: dict) -> dict:
    """The language model of policy params, without a value head (for export)."""
    return {k: v for k, v in params.items() if k != VALUE_HEAD}
