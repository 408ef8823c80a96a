"""Prompts and texts to token ids with the checkpoint's tokenizer (chat template or raw text), and
sampled ids back to response texts; token rows left-padded into fixed-shape sampler batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from instructjax.tokenizers import Prompt, Tokenizer

TRUNCATIONS = ("drop", "truncate_prompt")


def prompt_text(tokenizer: Tokenizer, prompt: Prompt, chat_template: bool, source: str = "") -> str:
    """The prompt as the model sees it: rendered by the chat template ready for the reply, or raw."""
    if chat_template:
        return tokenizer.render_prompt(prompt)
    if not isinstance(prompt, str):
        raise ValueError(f"{source}: a prompt of chat messages needs chat_template=True")
    return prompt


def user_text(prompt: Prompt, source: str = "") -> str:
    """A prompt as reward functions get it, before any chat template: a string prompt itself; chat
    messages: the content of the last user message (the request the response answers)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    raise ValueError(f"{source}: a prompt of chat messages without a user message has no text for reward functions")


def prompt_ids(tokenizer: Tokenizer, prompt: Prompt, chat_template: bool, source: str = "") -> list[int]:
    """Token ids of the rendered prompt. A chat template writes its own special tokens (BOS);
    raw text gets the tokenizer's (its post-processor's BOS, if any)."""
    return tokenizer.encode(prompt_text(tokenizer, prompt, chat_template, source),
                            add_special_tokens=not chat_template)


def response_texts(tokenizer: Tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Sampled responses as text: the valid tokens (`mask`) without EOS, special tokens skipped."""
    eos = tokenizer.eos_id
    return tokenizer.decode_batch(tokens, mask & (tokens != eos) if eos is not None else mask)


def completion_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a response or completion, ending with EOS (its loss target: stop here)."""
    return tokenizer.encode(text) + [eos_id(tokenizer)]


def text_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of a pretraining passage with the tokenizer's special tokens, ending with EOS."""
    ids = tokenizer.encode(text, add_special_tokens=True)
    eos = eos_id(tokenizer)
    return ids if ids and ids[-1] == eos else ids + [eos]


def eos_id(tokenizer: Tokenizer) -> int:
    """The tokenizer's EOS id; the pipelines need one."""
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer!r} has no EOS token; the data pipelines end every response with EOS")
    return tokenizer.eos_id


def fit_prompt(prompt: list[int], rest: int, max_len: int, truncation: str) -> tuple[list[int] | None, bool]:
    """The prompt cut so that prompt + `rest` tokens fit `max_len`: (ids or None if dropped, truncated).

    "drop" drops what does not fit; "truncate_prompt" keeps the prompt's last tokens (at least one).
    """
    if len(prompt) + rest <= max_len:
        return prompt, False
    if truncation == "drop" or rest >= max_len:
        return None, False
    return prompt[len(prompt) + rest - max_len:], True


def check_truncation(truncation: str) -> str:
    """`truncation` if it is one of TRUNCATIONS."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    return truncation


def left_padded(rows: Sequence[Sequence[int]], pad_id: int, size: Optional[int] = None,
                length: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Token rows left-padded to `length` (None: the longest): (tokens int32 [size, length], mask
    bool [size, length]). Up to `size` rows (None: as many as given), copies of the last row fill
    the batch (sampled, then dropped): fixed shapes for the compiled sampler."""
    rows = list(rows) + [rows[-1]] * ((size or len(rows)) - len(rows))
    length = length or max(map(len, rows))
    tokens, mask = np.full((len(rows), length), pad_id, np.int32), np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        tokens[i, length - len(row):], mask[i, length - len(row):] = row, True
    return tokens, mask
