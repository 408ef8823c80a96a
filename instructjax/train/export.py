"""Export of a trained model to a Hugging Face directory (config.json + safetensors + tokenizer)."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any, Callable, Optional

import jax

from instructjax.checkpoints import save_hf
from instructjax.models import ModelConfig
from instructjax.parallel import host_values
from instructjax.tokenizers import Tokenizer


def write_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """`write(tmp)` into `<path>.tmp`, then renamed over `path` (process 0 only)."""
    if jax.process_index() != 0:
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def export_model(path: pathlib.Path, cfg: ModelConfig, params: Any, tokenizer: Optional[Tokenizer] = None) -> None:
    """Gather `params` from all devices and hosts and write them with `save_hf` from process 0,
    atomically: into `<path>.tmp`, then renamed over `path`."""
    params = host_values(params)
    write_atomically(path, lambda tmp: save_hf(tmp, cfg, params, tokenizer=tokenizer))
