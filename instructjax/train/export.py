"""Export of a trained model to a Hugging Face directory (config.json + safetensors + tokenizer)."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any, Callable, Optional

import jax

from instructjax.checkpoints import save_hf
from instructjax.checkpoints.peft import save_peft_adapter
from instructjax.models import ModelConfig, lora
from instructjax.parallel import host_values
from instructjax.tokenizers import Tokenizer

ADAPTER_DIR = "adapter"  # WORKDIR/export/adapter: the LoRA adapters in PEFT's format


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
    atomically: into `<path>.tmp`, then renamed over `path`. A LoRA model (`cfg.lora`) is written
    merged, and its adapters in PEFT's format to `<path>/adapter` (language models)."""
    params = host_values(params)

    def write(tmp: pathlib.Path) -> None:
        save_hf(tmp, *lora.merged_model(cfg, params), tokenizer=tokenizer)
        if cfg.lora is not None and "score_head" not in params:
            save_peft_adapter(tmp / ADAPTER_DIR, cfg, params)

    write_atomically(path, write)
