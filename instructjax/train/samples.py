"""Sample generations during training, written as text into the workdir for a human to read."""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
from jax.sharding import Mesh

from instructjax import parallel, sampling
from instructjax.data import render
from instructjax.models import ModelConfig
from instructjax.tokenizers import Prompt, Tokenizer


def generate_responses(cfg: ModelConfig, params: Any, tokenizer: Tokenizer, prompts: Sequence[Prompt], *,
                       chat_template: bool, rng: jax.Array, max_new_tokens: int, temperature: float,
                       mesh: Mesh) -> list[str]:
    """One sampled response per prompt (rendered with the chat template or as raw text)."""
    ids = [render.prompt_ids(tokenizer, p, chat_template) for p in prompts]
    rows = len(ids) + -len(ids) % parallel.batch_shards(mesh)  # rows must split over the mesh
    tokens, mask = render.left_padded(ids, tokenizer.pad_id, rows)
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
