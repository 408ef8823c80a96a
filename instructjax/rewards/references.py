"""Scores of the normalisation references (docs/formulas.md#reward-normalization): reference
demonstrations, or responses sampled from the SFT policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from instructjax import parallel, sampling
from instructjax.data import render
from instructjax.models import ModelConfig
from instructjax.tokenizers import Prompt, Tokenizer

ScoreRows = Callable[[dict], tuple[np.ndarray, np.ndarray]]


def demonstration_scores(score_rows: ScoreRows, batches: Iterable[dict], max_rows: int = 0) -> np.ndarray:
    """float32 [N]: scores of the demonstration rows (prompt + response + EOS) of unpacked SFT batches.

    `score_rows(batch) -> (scores [B], keep [B])` as host numpy; rows with keep False (padding at the
    end of a finite loader) are dropped. `max_rows` > 0 stops after that many rows.
    """
    out, total = [], 0
    for batch in batches:
        scores, keep = score_rows(batch)
        kept = np.asarray(scores, np.float32)[np.asarray(keep, bool)]
        out.append(kept[:max_rows - total] if max_rows else kept)
        total += len(out[-1])
        if max_rows and total >= max_rows:
            break
    if not total:
        raise ValueError("no demonstrations to score")
    return np.concatenate(out)


def sample_scores(score: Callable[[Any, Any], Any], policy_cfg: ModelConfig, policy_params: Any,
                  tokenizer: Tokenizer, prompts: Sequence[Prompt], *, chat_template: bool, rng: jax.Array,
                  max_new_tokens: int, temperature: float = 1.0, batch_size: int = 8,
                  mesh: Optional[Mesh] = None) -> np.ndarray:
    """float32 [N]: scores of one response sampled from the SFT policy for each of the N prompts.

    Each sequence is the rendered prompt + the response, scored at its last real token (the EOS,
    or the last sampled token when the budget ran out) by `score(tokens, mask) -> [B]` (host
    numpy). Every host passes the same prompts; `batch_size` must divide over the mesh's batch axes.
    """
    if not prompts:
        raise ValueError("no prompts to sample from")
    out = []
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start:start + batch_size]
        ids = [render.prompt_ids(tokenizer, p, chat_template) for p in chunk]
        prompt_tokens, prompt_mask = render.left_padded(ids, tokenizer.pad_id, batch_size)
        sample = sampling.generate(policy_cfg, policy_params, prompt_tokens, prompt_mask,
                                   rng=jax.random.fold_in(rng, i), max_new_tokens=max_new_tokens,
                                   temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                   mesh=mesh, batch_axes=parallel.BATCH_AXES)
        tokens = jnp.concatenate([jnp.asarray(prompt_tokens), sample.tokens], axis=1)
        mask = jnp.concatenate([jnp.asarray(prompt_mask), sample.mask], axis=1)
        out.append(np.asarray(score(tokens, mask), np.float32)[:len(chunk)])
    return np.concatenate(out)
