"""Batched sampling of text completions for lists of prompts: fixed batch shapes (one compilation),
a progress bar, and batches yielded as they finish so that callers can save and resume."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from instructjax import sampling
from instructjax.data.render import left_padded, prompt_ids, response_texts
from instructjax.models import ModelConfig
from instructjax.parallel import batches_over_processes
from instructjax.tokenizers import Prompt, Tokenizer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How completions are drawn."""

    k: int = 1  # completions per prompt
    max_new_tokens: int = 64  # response budget
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling; 1: off
    top_k: int = 0  # 0: off
    batch_size: int = 16  # prompts per compiled call (k rows each)
    chat_template: bool = True  # render prompts with the tokenizer's chat template
    dtype: Optional[str] = None  # compute dtype of sampling (None: the model's)


@dataclasses.dataclass(frozen=True)
class Completions:
    """The completions of a batch of prompts, prompt-major."""

    start: int  # index of the batch's first prompt in the full list
    texts: list[list[str]]  # [prompts][k]
    ended: np.ndarray  # bool [prompts, k]: the completion ended with EOS within the budget
    lengths: np.ndarray  # int [prompts, k]: response tokens, EOS included


def prompt_batches(tokenizer: Tokenizer, prompts: Sequence[Prompt], config: SamplingConfig,
                   start: int = 0) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(first index, real rows, tokens [batch_size, P], mask) of left-padded prompt batches from `start`,
    all of one width P; the last batch is filled up with copies of its last prompt (fixed shapes)."""
    if start % config.batch_size:
        raise ValueError(f"start={start} must be a multiple of batch_size={config.batch_size}")
    ids = [prompt_ids(tokenizer, p, config.chat_template, f"prompt {i}") for i, p in enumerate(prompts)]
    width = sampling.bucket_length(max(map(len, ids), default=1), 16)  # one width for all batches: one compilation
    for begin in range(start, len(prompts), config.batch_size):
        rows = ids[begin:begin + config.batch_size]
        yield (begin, len(rows), *left_padded(rows, tokenizer.pad_id or 0, config.batch_size, width))


def sample_batch(cfg: ModelConfig, params: Any, tokenizer: Tokenizer, tokens: np.ndarray, mask: np.ndarray,
                 config: SamplingConfig, rng: jax.Array) -> sampling.SampleOutput:
    """`ij.sampling.generate` with the settings of `config` and the tokenizer's EOS and pad ids."""
    return sampling.generate(cfg, params, tokens, mask, rng=rng, max_new_tokens=config.max_new_tokens,
                             temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id or 0, n=config.k, dtype=config.dtype,
                             prompt_bucket=None)


def iter_completions(cfg: ModelConfig, params: Any, tokenizer: Tokenizer, prompts: Sequence[Prompt],
                     config: SamplingConfig, rng: jax.Array, *, start: int = 0,
                     desc: str = "sampling") -> Iterator[Completions]:
    """Completions of `prompts[start:]`, one batch at a time. Batch b's draws depend only on `rng`
    and b, so a run resumed at a batch boundary gives the same completions as an uninterrupted one.
    Several processes share the batches (`parallel.batches_over_processes`: each samples its own on its
    devices, with `params` of its own) and each receives all of them, the same as one process."""
    batches = list(prompt_batches(tokenizer, prompts, config, start))

    def sample(b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        begin, _, tokens, mask = batches[b]
        out = sample_batch(cfg, params, tokenizer, tokens, mask, config,
                           jax.random.fold_in(rng, begin // config.batch_size))
        return tuple(np.asarray(x) for x in jax.device_get((out.tokens, out.mask, out.ended)))

    with tqdm(total=len(prompts), initial=start, desc=desc, unit="prompt", leave=False) as bar:
        for b, outputs in batches_over_processes(sample, len(batches)):
            begin, real = batches[b][:2]
            out_tokens, out_mask, ended = (x[:real * config.k] for x in outputs)  # the filler rows dropped
            texts = response_texts(tokenizer, out_tokens, out_mask)
            yield Completions(begin, [texts[i * config.k:(i + 1) * config.k] for i in range(real)],
                              ended.reshape(real, config.k), out_mask.sum(1).reshape(real, config.k))
            bar.update(real)
