"""Transformer models, their configs and pure prefill / decode functions."""

from instructjax.models.config import PRESETS, ModelConfig, RopeScaling, get_preset
from instructjax.models.functional import (decode_step, init_params, param_logical_axes, prefill,
                                           stack_layers, unstack_layers)
from instructjax.models.transformer import KVCache, Transformer, init_cache, positions_from_mask

__all__ = [
    "PRESETS", "ModelConfig", "RopeScaling", "get_preset", "Transformer", "KVCache", "init_cache",
    "positions_from_mask", "init_params", "param_logical_axes", "prefill", "decode_step",
    "stack_layers", "unstack_layers",
]
