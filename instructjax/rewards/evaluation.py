"""Evaluation of a reward model on validation comparisons: loss, pairwise accuracy (overall, by K,
by rank gap, by the constraint families of the prompts) and a histogram of the scores
(docs/formulas.md#pairwise-accuracy)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np

from instructjax.losses import ordered_pair_mask
from instructjax.stats import Rate
from instructjax.tasks.constraints import constraints_of_prompt


@dataclasses.dataclass
class ComparisonScores:
    """Scores of every valid completion of a set of prompts, host-side numpy, one row per prompt."""

    scores: np.ndarray  # float32 [N, K]
    ranks: np.ndarray  # int32 [N, K]
    valid: np.ndarray  # bool [N, K]
    index: Optional[np.ndarray] = None  # int32 [N]: each row's record in the comparisons source, when known


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _pairs(s: ComparisonScores) -> tuple[np.ndarray, np.ndarray]:
    """(pairs bool [N, w, l]: w ranked better than l, both valid; score differences s_w - s_l)."""
    pairs = ordered_pair_mask(s.ranks, s.valid)
    scores = s.scores.astype(np.float64)
    return pairs, scores[:, :, None] - scores[:, None, :]


def pair_results(s: ComparisonScores) -> tuple[np.ndarray, np.ndarray]:
    """Per ordered pair (as `comparison_metrics` counts them): its row int [P] and whether the reward
    model scores the better-ranked completion higher, bool [P]."""
    pairs, diff = _pairs(s)
    rows, w, l = np.nonzero(pairs)
    return rows, diff[rows, w, l] > 0


def accuracy_by_family(prompts: Sequence[str], correct: Sequence[bool]) -> dict[str, Rate]:
    """Pairwise accuracy per constraint family of the default task (a Wilson interval each): one
    prompt text and one correctness per pair; a pair counts towards every family its prompt has
    (`constraints_of_prompt`), once per family. Prompts without constraint sentences count nowhere."""
    if len(prompts) != len(correct):
        raise ValueError(f"{len(prompts)} prompts for {len(correct)} pairs")
    families: dict[str, frozenset[str]] = {}
    counts: dict[str, list[int]] = {}  # family -> [correct, pairs]
    for prompt, ok in zip(prompts, correct):
        if prompt not in families:
            try:
                families[prompt] = frozenset(c.family for c in constraints_of_prompt(prompt))
            except ValueError:  # not a task prompt
                families[prompt] = frozenset()
        for family in families[prompt]:
            count = counts.setdefault(family, [0, 0])
            count[0] += bool(ok)
            count[1] += 1
    return {family: Rate(n_correct, n) for family, (n_correct, n) in sorted(counts.items())}


def comparison_metrics(s: ComparisonScores) -> dict[str, float]:
    """Loss (InstructGPT eq. 1, no margin or centering), pairwise accuracy, accuracy by K (valid
    completions of the prompt) and by rank gap (rank_l - rank_w), pair counts, score mean and std.

    Ties give no pair; prompts without pairs are left out of the loss, as in training.
    """
    scores, ranks, valid = s.scores.astype(np.float64), s.ranks, s.valid
    pairs, diff = _pairs(s)
    n_pairs = pairs.sum(axis=(1, 2))
    per_prompt = np.where(pairs, -_log_sigmoid(diff), 0.0).sum(axis=(1, 2)) / np.maximum(n_pairs, 1)
    correct = pairs & (diff > 0)
    total = int(pairs.sum())
    out = {
        "loss": float(per_prompt[n_pairs > 0].mean()) if (n_pairs > 0).any() else float("nan"),
        "accuracy": float(correct.sum() / max(total, 1)),
        "pairs": float(total),
        "prompts": float(len(scores)),
        "score_mean": float(scores[valid].mean()),
        "score_std": float(scores[valid].std()),
    }
    k = valid.sum(axis=1)
    for kk in np.unique(k):
        rows = k == kk
        n = pairs[rows].sum()
        if n:
            out[f"accuracy_k{kk}"] = float(correct[rows].sum() / n)
            out[f"pairs_k{kk}"] = float(n)
    gap = ranks[:, None, :] - ranks[:, :, None]  # [N, w, l]: rank_l - rank_w
    for g in np.unique(gap[pairs]):
        where = pairs & (gap == g)
        out[f"accuracy_gap{g}"] = float(correct[where].sum() / where.sum())
        out[f"pairs_gap{g}"] = float(where.sum())
    return out


def score_histogram(path: str | os.PathLike, s: ComparisonScores, *, reference: np.ndarray | None = None,
                    title: str = "reward model scores") -> str:
    """A PNG histogram of the validation scores: best-ranked completions vs the others (and the
    normalisation reference scores when given). Returns the path."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

    best = s.valid & (s.ranks == np.where(s.valid, s.ranks, np.iinfo(np.int32).max).min(axis=1, keepdims=True))
    groups = [("best-ranked completions", s.scores[best]), ("other completions", s.scores[s.valid & ~best])]
    if reference is not None:
        groups.append(("normalisation reference", np.asarray(reference, np.float32)))
    everything = np.concatenate([g for _, g in groups if len(g)])
    bins = np.histogram_bin_edges(everything, bins=min(50, max(10, len(everything) // 5)))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in groups:
        if len(values):
            ax.hist(values, bins=bins, alpha=0.5, label=f"{label} (n={len(values)}, mean={values.mean():.3f})")
    ax.set_xlabel("score")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
