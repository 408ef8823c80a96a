"""Transformer models and their configs."""

from instructjax.models import lora

from instructjax.models.config import ModelConfig, get_preset
from instructjax.models.functional import param_logical_axes
from instructjax.models.transformer import Transformer

__all__ = ["ModelConfig", "Transformer", "get_preset", "param_logical_axes"]
