"""Prompt batches for tests of sampling and rollouts."""

from __future__ import annotations

import numpy as np


def left_padded(lengths: tuple[int, ...], vocab: int, seed: int = 0, low: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of the given lengths, left-padded: (tokens int32 [B, P], mask bool [B, P])."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for i, n in enumerate(lengths):
        tokens[i, width - n:] = rng.integers(low, vocab, n)
        mask[i, width - n:] = True
    return tokens, mask


def common_token(responses: np.ndarray) -> int:
    """The token id drawn in the most rows of `responses` [B, N] before their last step (ties: the
    smallest id): as EOS it ends those rows of the same draws early, which gives responses of
    different lengths from a random model."""
    early = [np.unique(row) for row in np.asarray(responses)[:, :-1]]
    ids, rows = np.unique(np.concatenate(early), return_counts=True)
    return int(ids[np.argmax(rows)])
