"""Sampling the responses of a rollout from the compiled sampler (docs/formulas.md#sampling).

    out = sample_responses(policy_cfg, policy_params, prompts, prompt_mask, rng=..., settings=SamplingSettings(...))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
from jax.sharding import Mesh

from instructjax import sampling
from instructjax.models import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (docs/formulas.md#sampling)."""

    max_new_tokens: int = 64  # response budget
    temperature: float = 1.0  # T; every logprob is log_softmax(logits / T) (docs/formulas.md#tempered-logprobs)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    eos_id: Optional[int] = None  # ends a response
    pad_id: int = 0  # fills responses after EOS (masked)
    dtype: Optional[str] = None  # sampling compute dtype (None: the model's)
    ignore_eos: bool = False  # force all max_new_tokens (benchmarks)


def sample_responses(cfg: ModelConfig, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array, *,
                     rng: jax.Array, settings: SamplingSettings, mesh: Optional[Mesh] = None) -> sampling.SampleOutput:
    """Responses to left-padded prompts from the compiled sampler (no prompt bucketing: the rollout
    keeps the loader's prompt length, so every iteration has the same shapes)."""
    return sampling.generate(cfg, params, prompt_tokens, prompt_mask, rng=rng, max_new_tokens=settings.max_new_tokens,
                             temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                             eos_id=settings.eos_id, pad_id=settings.pad_id, dtype=settings.dtype, prompt_bucket=None,
                             ignore_eos=settings.ignore_eos, mesh=mesh)
