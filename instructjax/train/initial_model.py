"""The model a run starts from: random, a Hugging Face directory, a GGUF file, the embedded default
model or an earlier stage's workdir, with the run's dtype / dropout / remat / scan settings."""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from instructjax import checkpoints, models
from instructjax.tokenizers import Tokenizer, tiny_tokenizer
from instructjax.train.config import INIT_SOURCES
from instructjax.train.workdir import Workdir
from instructjax.models import lora as lora_lib
from instructjax.models.functional import init_params, stack_layers, unstack_layers
from instructjax.models.lora import LoraConfig


def load_initial_model(init: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                       rng: jax.Array) -> tuple[models.ModelConfig, Any, Tokenizer]:
    """(cfg, params, tokenizer) from `config.init`, with `config.model`'s overrides applied."""
    cfg, params, tokenizer = _load(init, rng)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"init: the tokenizer has {tokenizer.vocab_size} ids, more than the model's "
                         f"vocab_size {cfg.vocab_size}")
    return with_overrides(cfg, params, model) + (tokenizer,)


def with_overrides(cfg: models.ModelConfig, params: Any,
                   model: ml_collections.ConfigDict) -> tuple[models.ModelConfig, Any]:
    """`cfg` with the run's model settings; params cast to param_dtype and (un)stacked for scan_layers."""
    if model.scan_layers and not cfg.scan_layers:
        params = stack_layers(params)
    elif cfg.scan_layers and not model.scan_layers:
        params = unstack_layers(params)
    cfg = cfg.replace(**model)
    params = jax.tree.map(lambda x: np.asarray(x, dtype=jnp.dtype(cfg.param_dtype)), params)
    return cfg, params


def with_adapters(cfg: models.ModelConfig, params: Any, lora: Optional[LoraConfig],
                  rng: jax.Array) -> tuple[models.ModelConfig, Any]:
    """`cfg` with `lora` and `params` with fresh adapters (PEFT's init: A kaiming-uniform, B zero, so the
    model starts as the base model); unchanged when `lora` is None."""
    if lora is None:
        return cfg, params
    cfg = cfg.replace(lora=lora)
    # the module initializers of the adapters only: XLA drops the init of the base weights
    adapters = jax.jit(lambda: lora_lib.adapters(init_params(cfg, rng)))()
    return cfg, lora_lib.with_adapters(params, jax.device_get(adapters))


def _load(init: ml_collections.ConfigDict, rng: jax.Array) -> tuple[models.ModelConfig, Any, Tokenizer]:
    if init.source not in INIT_SOURCES:
        raise ValueError(f"init.source={init.source!r}: expected one of {INIT_SOURCES}")
    if init.source == "random":
        cfg = models.get_preset(init.preset)
        tokenizer = tiny_tokenizer() if init.tokenizer == "tiny" else Tokenizer.from_pretrained(init.tokenizer)
        return cfg, init_params(cfg, rng), tokenizer
    if init.source == "default":
        return checkpoints.load_default_model()
    if not init.path:
        raise ValueError(f"init.source={init.source!r} needs init.path")
    if init.source == "gguf":
        return checkpoints.load_gguf(init.path)
    path = Workdir.at(init.path).export if init.source == "workdir" else pathlib.Path(init.path)
    if not path.is_dir():
        raise FileNotFoundError(f"init.path: {path} is not a directory (init.source={init.source!r})")
    cfg, params = checkpoints.load_hf(path)
    return cfg, params, Tokenizer.from_pretrained(path)
