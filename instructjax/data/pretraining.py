"""Pretraining-text batches for PPO-ptx: passages + EOS concatenated and cut into full rows."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from instructjax.data import packing, render
from instructjax.data.loader import Loader, LoaderConfig, Tokenized, batched, sharded_records, tokenized_stream
from instructjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class PretrainingConfig:
    """Rows of packed pretraining text."""

    max_len: int = 512  # tokens per row


def text_example(record: dict[str, Any], tokenizer: Tokenizer) -> Tokenized:
    """tokens int32 [n]: the passage with the tokenizer's special tokens, ending with EOS."""
    return Tokenized({"tokens": np.asarray(render.text_ids(tokenizer, record["text"]), np.int32)})


def pretraining_loader(source: Sequence[Any] | grain.MapDataset, tokenizer: Tokenizer, config: PretrainingConfig,
                       loader: LoaderConfig, mesh: jax.sharding.Mesh | None = None) -> Loader:
    """Batches of int32 `tokens`, `positions`, `segment_ids` and bool `attention_mask`, `loss_mask`,
    each [B, max_len]; every row is full except at the end of a finite pipeline."""
    render.eos_id(tokenizer)
    records = sharded_records(source, "pretraining_text", loader)
    tokenize = functools.partial(text_example, tokenizer=tokenizer)

    def build(tally: dict[str, int]) -> grain.IterDataset:
        return batched(packing.concat_then_split(tokenized_stream(records, tokenize, loader, tally), config.max_len),
                       loader)

    return Loader(build, num_records=len(source), mesh=mesh, config=loader)
