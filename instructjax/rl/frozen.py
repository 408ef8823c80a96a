"""Frozen models (reference, reward) kept in their compute dtype."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from instructjax import sampling
from instructjax.models import ModelConfig


def frozen_model(cfg: ModelConfig, params: Any, dtype: str = "") -> tuple[ModelConfig, Any]:
    """A frozen model kept in `dtype` ("": its compute dtype): the config computing in that dtype and the
    params cast to it once (a scalar head stays float32), not on every call."""
    cfg = cfg.replace(dtype=dtype or cfg.dtype)
    return cfg, sampling._cast_params(params, jnp.dtype(cfg.dtype))  # the sampler's one-time cast
