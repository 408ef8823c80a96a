"""Sample generations during training, written as text into the workdir for a human to read."""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from instructjax import parallel, sampling
from instructjax.data import render
from instructjax.models import ModelConfig
from instructjax.tokenizers import Prompt, Tokenizer


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Token rows left-padded to the longest: (tokens int32 [B', P], mask bool [B', P]). The last row
    is repeated so that B' is a multiple of `multiple` (rows must split over the mesh)."""
    rows = list(rows) + [rows[-1]] * (-len(rows) % multiple)
    length = max(map(len, rows))
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        tokens[i, length - len(row):], mask[i, length - len(row):] = row, True
    return tokens, mask


def generate_responses(cfg: ModelConfig, params: Any, tokenizer: Tokenizer, prompts: Sequence[Prompt], *,
                       chat_template: bool, rng: jax.Array, max_new_tokens: int, temperature: float,
                       mesh: Mesh) -> list[str]:
    """One sampled response per prompt (rendered with the chat template or as raw text)."""
    ids = [render.prompt_ids(tokenizer, p, chat_template) for p in prompts]
    tokens, mask = left_padded(ids, tokenizer.pad_id, parallel.batch_shards(mesh))
    out = sampling.generate(cfg, params, tokens, mask, rng=rng, max_new_tokens=max_new_tokens,
                            temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            mesh=mesh, batch_axes=parallel.BATCH_AXES)
    out_tokens, out_mask = parallel.host_values((out.tokens, out.mask))
    return tokenizer.decode_batch(out_tokens[:len(prompts)], out_mask[:len(prompts)])


def write_samples(path: pathlib.Path, step: int, prompts: Sequence[Prompt], responses: Sequence[str],
                  references: Sequence[str]) -> None:
    """A text file of prompt / sampled response / reference triples."""
    blocks = [f"# step {step}: {len(prompts)} samples\n"]
    for i, (prompt, response, reference) in enumerate(zip(prompts, responses, references), 1):
        blocks.append(f"=== sample {i} ===\n--- prompt ---\n{_prompt_text(prompt)}\n--- response ---\n{response}\n"
                      f"--- reference ---\n{reference}\n")
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(blocks))


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
