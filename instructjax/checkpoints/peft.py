"""LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`, loadable with
`peft.PeftModel.from_pretrained(base, path)` onto the base model saved by `save_hf`."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Union

import jax
import numpy as np
import safetensors.numpy

from instructjax.models import ModelConfig
from instructjax.models.lora import TARGETS

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# HF target name -> (HF module, our block part)
_MODULES = {name: ("self_attn", "attn") if name in ("q_proj", "k_proj", "v_proj", "o_proj") else ("mlp", "mlp")
            for name in TARGETS}


def peft_adapter_config(cfg: ModelConfig, base_model: str = "") -> dict:
    """PEFT's `LoraConfig` (as saved) of `cfg.lora` for a causal LM."""
    lora = cfg.lora
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout, "target_modules": sorted(lora.targets), "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "modules_to_save": None, "inference_mode": True, "base_model_name_or_path": base_model or None}


def adapter_tensors(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """PEFT's tensors of the adapters in `params`: lora_A [r, in] and lora_B [out, r] per target Linear."""
    tensors = {}
    for i in range(cfg.num_layers):
        for hf_name in cfg.lora.targets:
            hf_module, part = _MODULES[hf_name]
            ours = params[f"layers_{i}"][part][TARGETS[hf_name]]
            a, b = np.asarray(ours["lora_a"]), np.asarray(ours["lora_b"])
            prefix = f"base_model.model.model.layers.{i}.{hf_module}.{hf_name}"
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, cfg.lora.rank).T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b.reshape(cfg.lora.rank, -1).T)
    return tensors


def save_peft_adapter(path: Union[str, pathlib.Path], cfg: ModelConfig, params: Any, base_model: str = "") -> None:
    """Write the LoRA adapters of `params` (an LM with `cfg.lora`) as a PEFT adapter directory;
    `base_model`: recorded as base_model_name_or_path."""
    if cfg.lora is None:
        raise ValueError("save_peft_adapter: the model has no LoRA adapters (cfg.lora is None)")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(cfg, jax.device_get(params))
    (path / ADAPTER_CONFIG_FILE).write_text(json.dumps(peft_adapter_config(cfg, base_model), indent=2) + "\n")
    safetensors.numpy.save_file(tensors, str(path / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
