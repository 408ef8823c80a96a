"""SFT batches: prompt + response + EOS, the loss on the response and EOS, optionally packed."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

from instructjax.data import packing, render
from instructjax.data.loader import Loader, LoaderConfig, Tokenized, batched, host_batch_size, sharded_records, \
    tokenized_stream
from instructjax.tokenizers import Tokenizer

LOSS_ON = ("response", "all")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """How demonstrations become rows of tokens."""

    max_len: int = 512  # tokens per row
    truncation: str = "drop"  # too long: "drop" the example, or "truncate_prompt" from the left (both counted)
    loss_on: str = "response"  # loss targets: "response" (+ EOS) or "all" tokens of the example
    pack: bool = False  # first-fit pack several examples per row (segment ids, positions restart)
    chat_template: bool = True  # render prompts with the tokenizer's chat template; False: raw string prompts

    def __post_init__(self):
        render.check_truncation(self.truncation)
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {LOSS_ON}, got {self.loss_on!r}")


def sft_example(record: dict[str, Any], tokenizer: Tokenizer, config: SFTConfig) -> Tokenized:
    """`tokens` = prompt + response + EOS and `loss_mask` (True where the token is a loss target:
    the response and EOS, or every token but the first with loss_on="all"), unpadded."""
    prompt = render.prompt_ids(tokenizer, record["prompt"], config.chat_template, record["source"])
    response = render.completion_ids(tokenizer, record["response"])
    prompt, truncated = render.fit_prompt(prompt, len(response), config.max_len, config.truncation)
    if prompt is None:
        return Tokenized(None, "overlong")
    tokens = prompt + response
    if config.loss_on == "response":
        loss_mask = [False] * len(prompt) + [True] * len(response)
    else:
        loss_mask = [False] + [True] * (len(tokens) - 1)
    return Tokenized({"tokens": tokens, "loss_mask": loss_mask}, truncated=truncated)


def _row(record: dict[str, Any], tokenizer: Tokenizer, config: SFTConfig) -> Tokenized:
    item = sft_example(record, tokenizer, config)
    if item.element is None:
        return item
    tokens, loss_mask = item.element["tokens"], item.element["loss_mask"]
    if config.pack:
        element = {"tokens": np.asarray(tokens, np.int32), "loss_mask": np.asarray(loss_mask, bool)}
    else:
        element = packing.padded_row(tokens, loss_mask, config.max_len, tokenizer.pad_id)
    return item._replace(element=element)


def sft_loader(source: Sequence[Any] | grain.MapDataset, tokenizer: Tokenizer, config: SFTConfig,
               loader: LoaderConfig, mesh: jax.sharding.Mesh | None = None) -> Loader:
    """Batches of demonstrations: int32 `tokens`, `positions`, `segment_ids` (0 = padding) and bool
    `attention_mask`, `loss_mask`, each [batch, max_len]. Token i is predicted from position i - 1."""
    render.eos_id(tokenizer)
    records = sharded_records(source, "demonstrations", loader)

    def build(tally: dict[str, int]) -> grain.IterDataset:
        ds = tokenized_stream(records, functools.partial(_row, tokenizer=tokenizer, config=config), loader, tally)
        if config.pack:
            ds = packing.pack_examples(ds, config.max_len, host_batch_size(loader), loader.seed)
        return batched(ds, loader)

    return Loader(build, num_records=len(source), mesh=mesh, config=loader)
