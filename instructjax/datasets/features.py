"""How records are stored in the TFDS datasets, and read back, without TensorFlow.

Only features that TFDS encodes and decodes with numpy are used (Text, int tensors, Sequence
of them), so `tfds.data_source` reads the ArrayRecord files with no TensorFlow installed. A
prompt is stored as `prompt` (the string, or "" for chat messages) plus `messages` (the chat
messages, or none for a string). Every record keeps `source`, its "file:line".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from instructjax.datasets.jsonl import check_kind

_TEXT_FIELDS = {
    "demonstrations": ("response",),
    "comparisons": (),
    "prompts": (),
    "pretraining_text": ("text",),
}


def features(kind: str) -> tfds.features.FeaturesDict:
    """The TFDS features of a stored record of `kind`."""
    spec: dict[str, Any] = {"source": tfds.features.Text()}
    if check_kind(kind) != "pretraining_text":
        spec["prompt"] = tfds.features.Text()
        spec["messages"] = tfds.features.Sequence({"role": tfds.features.Text(), "content": tfds.features.Text()})
    for field in _TEXT_FIELDS[kind]:
        spec[field] = tfds.features.Text()
    if kind == "comparisons":
        spec["completions"] = tfds.features.Sequence(tfds.features.Text())
        spec["ranking"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return tfds.features.FeaturesDict(spec)


def encode(kind: str, record: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A validated record (see `jsonl.validate`) as the features of `kind` store it."""
    stored: dict[str, Any] = {"source": source}
    if kind != "pretraining_text":
        prompt = record["prompt"]
        stored["prompt"] = prompt if isinstance(prompt, str) else ""
        stored["messages"] = [] if isinstance(prompt, str) else list(prompt)
    for field in _TEXT_FIELDS[kind]:
        stored[field] = record[field]
    if kind == "comparisons":
        stored["completions"] = list(record["completions"])
        stored["ranking"] = np.asarray(record["ranking"], np.int32)
    return stored


def decode(kind: str, stored: Mapping[str, Any]) -> dict[str, Any]:
    """A record as `jsonl.validate` returns it (plus `source`), from what `tfds.data_source` reads.

    Also accepts records that are already decoded (str fields, message lists), so in-memory
    lists of records feed the pipelines too.
    """
    record: dict[str, Any] = {"source": _str(stored.get("source", ""))}
    if kind != "pretraining_text":
        record["prompt"] = _prompt(stored)
    for field in _TEXT_FIELDS[kind]:
        record[field] = _str(stored[field])
    if kind == "comparisons":
        record["completions"] = [_str(c) for c in stored["completions"]]
        record["ranking"] = [int(r) for r in stored["ranking"]]
    return record


def _prompt(stored: Mapping[str, Any]) -> str | list[dict[str, str]]:
    prompt = stored["prompt"]
    if not isinstance(prompt, (str, bytes)):  # already decoded messages
        return [{"role": _str(m["role"]), "content": _str(m["content"])} for m in prompt]
    messages = stored.get("messages")
    if messages is None or len(messages["role"]) == 0:
        return _str(prompt)
    return [{"role": _str(r), "content": _str(c)} for r, c in zip(messages["role"], messages["content"])]


def _str(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
