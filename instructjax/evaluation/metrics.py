"""Constraint pass rates by family, McNemar's test, and win rates by a labeler (`Rate` and
`mean_and_interval` come from `instructjax.stats` and are re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from instructjax.labelers import Labeler
from instructjax.stats import Rate, mean_and_interval
from instructjax.tasks.instructions import TaskPrompt

__all__ = ["Rate", "mcnemar_exact", "mean_and_interval", "pass_rates", "prompt_passes", "win_rate"]


def pass_rates(prompts: Sequence[TaskPrompt], responses: Sequence[str]) -> dict[str, Rate]:
    """Per constraint family (each constraint instance counts once) and `overall` (a prompt passes
    when all its constraints hold: IFEval's prompt-level strict accuracy)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    passed: dict[str, list[bool]] = {}
    overall = []
    for prompt, response in zip(prompts, responses):
        checks = [(c.family, c.check(response)) for c in prompt.constraints]
        for family, ok in checks:
            passed.setdefault(family, []).append(ok)
        overall.append(all(ok for _, ok in checks))
    rates = {family: Rate(sum(v), len(v)) for family, v in sorted(passed.items())}
    rates["overall"] = Rate(sum(overall), len(overall))
    return rates


def prompt_passes(prompts: Sequence[TaskPrompt], responses: Sequence[str]) -> np.ndarray:
    """bool [N]: whether each response meets every constraint of its prompt (the `overall` pass)."""
    return np.array([all(c.check(r) for c in p.constraints) for p, r in zip(prompts, responses, strict=True)], bool)


def mcnemar_exact(ours: Sequence[bool], theirs: Sequence[bool]) -> dict[str, float]:
    """McNemar's exact test of paired pass/fail outcomes on the same prompts (McNemar 1947).

    Only discordant prompts carry information: `ours_only` passes of ours that theirs failed and
    `theirs_only` the reverse; under "no difference" each discordant prompt is a fair coin, so the
    two-sided p-value is the binomial test of `ours_only` out of their sum at 1/2. `difference` is
    the pass-rate difference ours - theirs.
    """
    ours, theirs = np.asarray(ours, bool), np.asarray(theirs, bool)
    if ours.shape != theirs.shape or ours.ndim != 1:
        raise ValueError(f"paired outcomes need two equal 1-D shapes, got {ours.shape} and {theirs.shape}")
    ours_only, theirs_only = int(np.sum(ours & ~theirs)), int(np.sum(~ours & theirs))
    discordant = ours_only + theirs_only
    p_value = stats.binomtest(ours_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"difference": float(ours.mean() - theirs.mean()) if ours.size else float("nan"),
            "ours_only": ours_only, "theirs_only": theirs_only, "p_value": float(p_value), "prompts": int(ours.size)}


def win_rate(labeler: Labeler, prompts: Sequence[str], ours: Sequence[str], theirs: Sequence[str]) -> Rate:
    """How often the labeler ranks `ours` above `theirs` (a tie counts one half)."""
    wins = 0.0
    for prompt, a, b in zip(prompts, ours, theirs, strict=True):
        rank_a, rank_b = labeler.rank(prompt, [a, b])
        wins += 1.0 if rank_a < rank_b else 0.5 if rank_a == rank_b else 0.0
    return Rate(wins, len(prompts))
