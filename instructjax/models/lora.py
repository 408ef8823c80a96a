"""LoRA adapters (Hu et al. 2021) on the attention and MLP projections, as parameters beside the kernels.

A target projection of kernel W [*in, *out] gets `lora_a` [*in, r] (kaiming-uniform, as PEFT) and
`lora_b` [r, *out] (zeros) and computes x.W + (alpha / r) x.A.B (`Projection`). The adapters live
in the params tree next to their kernel, so the same params with the adapters dropped
(`without_adapters`) are the base model: no copy of the base weights is needed for a reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# HF module names of the projections -> ours (names unique over a block's attention and MLP)
TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
           "down_proj": "down"}
ADAPTERS = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scale (alpha / rank), target projections (HF names, keys of TARGETS) and dropout of the adapters."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple = tuple(TARGETS)
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"lora.rank={self.rank}: expected > 0 (0 turns LoRA off)")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"lora.targets={tuple(self.targets)!r}: expected a non-empty subset of {tuple(TARGETS)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout={self.dropout}: expected 0 <= dropout < 1")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def targets_projection(self, name: str) -> bool:
        """Whether our projection `name` ("q", ..., "down") carries adapters."""
        return name in (TARGETS[t] for t in self.targets)


def is_adapter(path: tuple) -> bool:
    """Whether a param at `path` (a tuple of keys or jax key entries) is a LoRA adapter."""
    last = path[-1]
    return getattr(last, "key", last) in ADAPTERS


def has_adapters(params: Any) -> bool:
    """Whether a params-shaped tree (arrays, shapes, shardings) holds LoRA adapters."""
    return any(is_adapter(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))


def trained_with_adapters(path: tuple) -> bool:
    """Whether a param at `path` is trained when the model has adapters: the adapters and a score head (a reward
    model's, or a value head on a policy trunk)."""
    return is_adapter(path) or getattr(path[0], "key", path[0]) == "score_head"


def without_adapters(params: dict) -> dict:
    """The base model's params: the same arrays, adapters left out (no copy)."""
    return {k: without_adapters(v) for k, v in params.items() if k not in ADAPTERS} if isinstance(params, dict) \
        else params


def adapters(params: dict) -> dict:
    """The adapters of `params` (a nested dict holding only them)."""
    out = {k: (v if k in ADAPTERS else adapters(v)) for k, v in params.items() if k in ADAPTERS or isinstance(v, dict)}
    return {k: v for k, v in out.items() if k in ADAPTERS or v}


def with_adapters(params: dict, adapter_tree: dict) -> dict:
    """`params` with the adapters of `adapter_tree` (from `adapters`) added."""
    out = dict(params)
    for k, v in adapter_tree.items():
        out[k] = v if k in ADAPTERS else with_adapters(params[k], v)
    return out


def merged(params: dict, lora: LoraConfig) -> dict:
    """The base model's params with every adapter folded into its kernel: W + (alpha / r) A.B (float32 sum)."""
    def merge(tree):
        if not isinstance(tree, dict):
            return tree
        if "lora_a" not in tree:
            return {k: merge(v) for k, v in tree.items()}
        kernel = np.asarray(tree["kernel"])
        delta = np.tensordot(np.asarray(tree["lora_a"], np.float32), np.asarray(tree["lora_b"], np.float32), axes=1)
        out = {k: v for k, v in tree.items() if k not in ADAPTERS}
        out["kernel"] = (kernel.astype(np.float32) + lora.scale * delta).astype(kernel.dtype)
        return out

    return merge(jax.device_get(params))


def merged_model(cfg: Any, params: dict) -> tuple[Any, dict]:
    """(ModelConfig, params) of the plain model equal to `cfg` + `params`: adapters merged, `lora` off."""
    if cfg.lora is None:
        return cfg, params
    return cfg.replace(lora=None), merged(params, cfg.lora)


def kaiming_uniform_a(rng: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
    """PEFT's init of A (torch's kaiming_uniform_ with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = int(np.prod(shape[:-1]))
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(rng, shape, dtype, -bound, bound)
