"""Reward-model batches: one element per prompt holding its K completions, each forwarded once."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from instructjax.data import render
from instructjax.data.loader import Loader, LoaderConfig, Tokenized, batched, sharded_records, tokenized_stream
from instructjax.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    """How a prompt and its ranked completions become a [K, max_len] block of rows."""

    max_len: int = 512  # tokens of prompt + completion + EOS per row
    max_completions: int = 4  # K is padded to this; records with more completions are dropped (counted)
    truncation: str = "drop"  # too long: "drop" the record, or "truncate_prompt" from the left (both counted)
    chat_template: bool = True  # render prompts with the tokenizer's chat template; False: raw string prompts

    def __post_init__(self):
        render.check_truncation(self.truncation)
        if self.max_completions < 2:
            raise ValueError(f"max_completions must be >= 2, got {self.max_completions}")


def comparison_example(record: dict[str, Any], tokenizer: Tokenizer, config: ComparisonConfig) -> Tokenized:
    """Row k = prompt + completion k + EOS, right-padded; slots past K are padding (valid False).

    tokens int32 [K, T]; attention_mask, response_mask (completion + EOS) bool [K, T];
    last_index int32 [K] (the EOS, where a reward model reads its score); ranks int32 [K]
    (0 = best, equal = tie); valid bool [K]; index int32 (the record's position in its source, -1
    when the record has none; `prompt_texts` finds its prompt).
    """
    k_max, t = config.max_completions, config.max_len
    if len(record["completions"]) > k_max:
        return Tokenized(None, "too_many_completions")
    prompt = render.prompt_ids(tokenizer, record["prompt"], config.chat_template, record["source"])
    completions = [render.completion_ids(tokenizer, c) for c in record["completions"]]
    prompt, truncated = render.fit_prompt(prompt, max(map(len, completions)), t, config.truncation)
    if prompt is None:
        return Tokenized(None, "overlong")
    element = {"tokens": np.full((k_max, t), tokenizer.pad_id, np.int32),
               "attention_mask": np.zeros((k_max, t), bool), "response_mask": np.zeros((k_max, t), bool),
               "last_index": np.zeros(k_max, np.int32), "ranks": np.zeros(k_max, np.int32),
               "valid": np.zeros(k_max, bool), "index": np.int32(record.get("index", -1))}
    for k, completion in enumerate(completions):
        n = len(prompt) + len(completion)
        element["tokens"][k, :n] = prompt + completion
        element["attention_mask"][k, :n] = True
        element["response_mask"][k, len(prompt):n] = True
        element["last_index"][k] = n - 1
    element["ranks"][:len(completions)] = record["ranking"]
    element["valid"][:len(completions)] = True
    return Tokenized(element, truncated=truncated)


def with_record_arrays(tokenize: Callable[[dict[str, Any]], Tokenized], arrays: Mapping[str, np.ndarray],
                       record: dict[str, Any]) -> Tokenized:
    """`tokenize(record)` with `arrays[name][record index]` added to the element under each name."""
    item = tokenize(record)
    if item.element is not None:
        item.element.update({name: values[record["index"]] for name, values in arrays.items()})
    return item


def comparison_loader(source: Sequence[Any] | grain.MapDataset, tokenizer: Tokenizer, config: ComparisonConfig,
                      loader: LoaderConfig, mesh: jax.sharding.Mesh | None = None, *,
                      record_arrays: Mapping[str, np.ndarray] | None = None) -> Loader:
    """Batches of comparisons: the fields of `comparison_example` with a leading batch axis.

    `record_arrays`: arrays with one row per record of `source`; each element also gets its record's
    row under the array's name (DPO's cached reference logprobs, `instructjax.train.dpo`).
    """
    render.eos_id(tokenizer)
    records = sharded_records(source, "comparisons", loader)
    tokenize = functools.partial(comparison_example, tokenizer=tokenizer, config=config)
    if record_arrays:
        tokenize = functools.partial(with_record_arrays, tokenize, dict(record_arrays))
    return Loader(lambda tally: batched(tokenized_stream(records, tokenize, loader, tally), loader),
                  num_records=len(source), mesh=mesh, config=loader)
