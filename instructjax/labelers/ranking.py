"""Labelers rank the K completions of a prompt; rankings become comparisons records.

Ranks are dense: 0 = best, equal ranks = tie, the next group gets the next integer.
Duplicate and blank completions: the data layer rejects records holding them, so filter the K
samples with `unique_completions` before ranking. A ranking where every completion ties carries
no preference: `rank_to_comparison` returns None for it, and the caller counts it as skipped.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Protocol

from instructjax.tasks.quality import quality
from instructjax.tasks.instructions import TaskPrompt

QUALITY_DECIMALS = 2  # quality is compared rounded, so near-equal completions tie


class Labeler(Protocol):
    """Anything that ranks the completions of a prompt (a rule, a model, a person)."""

    def rank(self, prompt: str, completions: Sequence[str]) -> list[int]:
        """Dense ranks of `completions`: 0 = best, equal ranks = tie."""
        ...


def dense_ranks(keys: Sequence[Hashable]) -> list[int]:
    """Dense ranks where a larger key is better: the largest keys get 0, the next 1, and so on."""
    order = sorted(set(keys), reverse=True)
    rank_of = {key: rank for rank, key in enumerate(order)}
    return [rank_of[key] for key in keys]


def unique_completions(completions: Iterable[str]) -> list[str]:
    """The distinct non-blank completions, first occurrences in order: what a comparison can hold."""
    return [c for c in dict.fromkeys(completions) if c.strip()]


class ConstraintLabeler:
    """Ranks by the number of the prompt's constraints a completion obeys, then by `quality`."""

    def __init__(self, prompts: Iterable[TaskPrompt], quality_decimals: int = QUALITY_DECIMALS):
        self.quality_decimals = quality_decimals  # coarser: more ties, only clear quality gaps rank
        self._prompts: dict[str, TaskPrompt] = {}
        for p in prompts:
            if self._prompts.setdefault(p.prompt, p) != p:
                raise ValueError(f"two different task prompts share the text {p.prompt!r}")

    def task(self, prompt: str) -> TaskPrompt:
        """The task prompt of a prompt text; KeyError if this labeler was not given it."""
        try:
            return self._prompts[prompt]
        except KeyError:
            raise KeyError(f"unknown prompt {prompt!r}: the labeler knows {len(self._prompts)} task prompts; "
                           f"pass the user message text of one of them") from None

    def score(self, prompt: str, completion: str) -> tuple[int, float]:
        """(constraints obeyed, quality rounded to `quality_decimals`): larger is better."""
        task = self.task(prompt)
        obeyed = sum(c.check(completion) for c in task.constraints)
        return obeyed, round(quality(task, completion), self.quality_decimals)

    def rank(self, prompt: str, completions: Sequence[str]) -> list[int]:
        """Dense ranks of `completions` by `score`: 0 = best, equal scores tie."""
        return dense_ranks([self.score(prompt, c) for c in completions])


def rank_to_comparison(prompt: str | list[dict[str, str]], completions: Sequence[str],
                       ranks: Sequence[int]) -> dict[str, Any] | None:
    """The comparisons record {"prompt", "completions", "ranking"}; None if every completion ties.

    Completions must be distinct and non-blank (see `unique_completions`); ranks are made dense.
    """
    if len(completions) < 2:
        raise ValueError(f"a comparison needs K >= 2 completions, got {len(completions)}")
    if len(ranks) != len(completions):
        raise ValueError(f"{len(ranks)} ranks for {len(completions)} completions")
    if any(not isinstance(r, int) or isinstance(r, bool) or r < 0 for r in ranks):
        raise ValueError(f"ranks must be non-negative integers, got {list(ranks)}")
    if unique_completions(completions) != list(completions):
        raise ValueError("completions must be distinct and non-blank: filter them with unique_completions "
                         "before ranking")
    if len(set(ranks)) == 1:
        return None
    return {"prompt": prompt, "completions": list(completions), "ranking": dense_ranks([-r for r in ranks])}
