"""Constraint pass rates by family, McNemar's test, and win rates and pairwise judgements by a labeler
(`Rate` and `mean_and_interval` come from `instructjax.stats` and are re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from instructjax.labelers import Labeler
from instructjax.stats import Rate, mean_and_interval
from instructjax.tasks.instructions import TaskPrompt

__all__ = ["Rate", "mcnemar_exact", "mean_and_interval", "pairwise_outcomes", "pass_rates", "preference",
           "prompt_passes", "reward_agreement", "win_rate"]


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


def preference(labeler: Labeler, prompt: str, ours: str, theirs: str) -> float:
    """The labeler's verdict on two responses to a prompt: 1 when it ranks `ours` above `theirs`, 0.5 for a
    tie, 0 below."""
    rank_ours, rank_theirs = labeler.rank(prompt, [ours, theirs])
    return 1.0 if rank_ours < rank_theirs else 0.5 if rank_ours == rank_theirs else 0.0


def win_rate(labeler: Labeler, prompts: Sequence[str], ours: Sequence[str], theirs: Sequence[str]) -> Rate:
    """How often the labeler ranks `ours` above `theirs` (a tie counts one half)."""
    return Rate(sum(preference(labeler, p, a, b) for p, a, b in zip(prompts, ours, theirs, strict=True)),
                len(prompts))


def pairwise_outcomes(labeler: Labeler, prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> np.ndarray:
    """float [N, P, P]: the labeler's `preference` of policy i's response over policy j's to each prompt, for
    the responses [P][N] of P policies; [n, j, i] = 1 - [n, i, j] (each pair is judged once), NaN on the
    diagonal (no game). The input of `instructjax.evaluation.elo.elo_summary`."""
    outcomes = np.full((len(prompts), len(responses), len(responses)), np.nan)
    for i, ours in enumerate(responses):
        for j in range(i + 1, len(responses)):
            for n, (prompt, a, b) in enumerate(zip(prompts, ours, responses[j], strict=True)):
                outcomes[n, i, j] = preference(labeler, prompt, a, b)
                outcomes[n, j, i] = 1.0 - outcomes[n, i, j]
    return outcomes


def reward_agreement(outcomes: np.ndarray, scores: np.ndarray) -> Rate:
    """How often a reward model orders two policies' responses to a prompt as the labeler does, from the
    labeler's `pairwise_outcomes` [N, P, P] and the reward model's scores [P, N] of the same responses:
    over every pair of policies on every prompt that the labeler does not tie, the response with the
    higher score is the one the labeler prefers (an equal score counts one half)."""
    outcomes, scores = np.asarray(outcomes, np.float64), np.asarray(scores, np.float64)
    num_prompts, num_policies = outcomes.shape[:2]
    if outcomes.shape != (num_prompts, num_policies, num_policies) or scores.shape != (num_policies, num_prompts):
        raise ValueError(f"expected outcomes [N, P, P] and scores [P, N], got {outcomes.shape} and {scores.shape}")
    upper = np.triu_indices(num_policies, k=1)
    verdicts = outcomes[:, upper[0], upper[1]]  # [N, pairs]: 1 when the first policy's response is preferred
    margins = (scores[upper[0]] - scores[upper[1]]).T  # [N, pairs]: the first's score minus the second's
    decided = verdicts != 0.5
    agree = np.where(margins == 0, 0.5, (margins > 0) == (verdicts == 1.0))
    return Rate(float(agree[decided].sum()), int(decided.sum()))
