"""Sampler batches: prompts rendered, tokenized and left-padded, with their text for logging and
their record index, by which reward functions get the prompt as the data has it (`prompt_texts`)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import jax
import numpy as np

from instructjax.data import render
from instructjax.data.loader import Loader, LoaderConfig, Tokenized, batched, sharded_records, tokenized_stream
from instructjax.datasets import features
from instructjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How prompts become left-padded rows for `ij.sampling.generate`."""

    max_prompt_len: int = 256  # tokens per prompt row
    truncation: str = "drop"  # too long: "drop" the prompt, or "truncate_prompt" from the left (both counted)
    chat_template: bool = True  # render prompts with the tokenizer's chat template; False: raw string prompts

    def __post_init__(self):
        render.check_truncation(self.truncation)


def prompt_example(record: dict[str, Any], tokenizer: Tokenizer, config: PromptConfig) -> Tokenized:
    """tokens int32 [P] left-padded, mask bool [P] (True = real token), `index` int32 (the record's
    position in the source), and the rendered `text` and `source` strings (host-local: they stay
    numpy in global batches)."""
    text = render.prompt_text(tokenizer, record["prompt"], config.chat_template, record["source"])
    ids = tokenizer.encode(text, add_special_tokens=not config.chat_template)
    ids, truncated = render.fit_prompt(ids, 0, config.max_prompt_len, config.truncation)
    if ids is None:
        return Tokenized(None, "overlong_prompt")
    p = config.max_prompt_len
    tokens, mask = np.full(p, tokenizer.pad_id, np.int32), np.zeros(p, bool)
    tokens[p - len(ids):], mask[p - len(ids):] = ids, True
    return Tokenized({"tokens": tokens, "mask": mask, "index": np.int32(record["index"]), "text": np.asarray(text),
                      "source": np.asarray(record["source"])}, truncated=truncated)


def prompt_loader(source: Sequence[Any] | grain.MapDataset, tokenizer: Tokenizer, config: PromptConfig,
                  loader: LoaderConfig, mesh: jax.sharding.Mesh | None = None) -> Loader:
    """Batches of prompts: `tokens` int32 [B, P], `mask` bool [B, P], `index` int32 [B], `text` and
    `source` str [B]."""
    records = sharded_records(source, "prompts", loader)
    tokenize = functools.partial(prompt_example, tokenizer=tokenizer, config=config)
    return Loader(lambda tally: batched(tokenized_stream(records, tokenize, loader, tally), loader),
                  num_records=len(source), mesh=mesh, config=loader)


def prompt_texts(source: Sequence[Any] | grain.MapDataset, indices: Iterable[int]) -> list[str]:
    """The prompts of `source` at record `indices` (a batch's `index`) as reward functions get them:
    as the data has them, before the chat template (`render.user_text`). The index is a global
    array like the tokens, so every host can find every row's prompt."""
    texts = []
    for i in indices:
        record = features.decode("prompts", source[int(i)])
        texts.append(render.user_text(record["prompt"], record["source"]))
    return texts
