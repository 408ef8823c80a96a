"""Rows of several examples: first-fit packing of SFT examples, concat-then-split of text.

In a packed row, `segment_ids` number the examples from 1 (0 = padding), attention must stay
inside a segment, positions restart at 0 for each segment, and a token is a loss target only if
the token before it is in the same segment.
"""

from __future__ import annotations

import grain
import numpy as np


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
    """int32 positions restarting at 0 at each segment of a row (0 on padding)."""
    index = np.arange(segment_ids.shape[-1])
    starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
    positions = index - np.maximum.accumulate(np.where(starts, index, 0))
    return np.where(segment_ids > 0, positions, 0).astype(np.int32)


def continuation_mask(segment_ids: np.ndarray) -> np.ndarray:
    """bool: the token follows a token of its own segment, so the model can predict it."""
    follows = np.concatenate([[False], segment_ids[1:] == segment_ids[:-1]])
    return follows & (segment_ids > 0)


def padded_row(tokens: list[int], loss_mask: list[bool], max_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One example right-padded to `max_len`, as a row with a single segment."""
    n = len(tokens)
    row = {"tokens": np.full(max_len, pad_id, np.int32), "loss_mask": np.zeros(max_len, bool),
           "segment_ids": np.zeros(max_len, np.int32), "positions": np.zeros(max_len, np.int32)}
    row["tokens"][:n], row["loss_mask"][:n] = tokens, loss_mask
    row["segment_ids"][:n], row["positions"][:n] = 1, np.arange(n)
    row["attention_mask"] = row["segment_ids"] > 0
    return row


def pack_examples(ds: grain.IterDataset, max_len: int, num_bins: int, seed: int) -> grain.IterDataset:
    """First-fit packing of variable-length {"tokens", "loss_mask"} into rows of `max_len` (grain's
    FirstFitPackIterDataset), emitted `num_bins` rows at a time in an order shuffled by `seed`."""
    packed = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct={"tokens": max_len, "loss_mask": max_len}, num_packing_bins=num_bins, seed=seed,
        shuffle_bins=True)
    return packed.map(_packed_example_row)


def _packed_example_row(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = x["tokens_segment_ids"]
    return {"tokens": x["tokens"], "loss_mask": x["loss_mask"].astype(bool), "segment_ids": segment_ids,
            "positions": x["tokens_positions"], "attention_mask": segment_ids > 0}


def concat_then_split(ds: grain.IterDataset, max_len: int) -> grain.IterDataset:
    """Token streams {"tokens"} concatenated and cut into full rows of `max_len` (grain's
    ConcatThenSplitIterDataset); a passage cut in two continues in the next row as a new segment."""
    rows = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": max_len})
    return rows.map(_text_row)


def _text_row(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = x["tokens_segment_ids"]
    return {"tokens": x["tokens"], "segment_ids": segment_ids, "positions": segment_positions(segment_ids),
            "attention_mask": segment_ids > 0, "loss_mask": continuation_mask(segment_ids)}
