"""Labelers write demonstrations (InstructGPT step 1) and rank the K completions of a prompt (step 2):
a rule-based labeler and demonstrator for the default task, and a terminal session where a person ranks.

    labeler = ij.labelers.ConstraintLabeler(task_prompts)
    ranks = labeler.rank(prompt, completions)            # 0 = best, ties share a rank
    record = ij.labelers.rank_to_comparison(prompt, completions, ranks)
    answer = ij.labelers.ConstraintDemonstrator().edit(task_prompt, sample)   # None: could not
"""

from instructjax.labelers.demonstrator import MIN_CLOSENESS, ConstraintDemonstrator, closeness
from instructjax.labelers.ranking import (QUALITY_DECIMALS, ConstraintLabeler, Labeler, dense_ranks,
                                          rank_to_comparison, unique_completions)
from instructjax.labelers.session import QUESTION, SessionSummary, label_session, parse_ranking

__all__ = [
    "MIN_CLOSENESS", "QUALITY_DECIMALS", "QUESTION", "ConstraintDemonstrator", "ConstraintLabeler", "Labeler",
    "SessionSummary", "closeness", "dense_ranks", "label_session", "parse_ranking", "rank_to_comparison",
    "unique_completions",
]
