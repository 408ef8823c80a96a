"""Labelers rank the K completions of a prompt (InstructGPT step 2): a rule-based labeler for the
default task, and a terminal session where a person ranks them.

    labeler = ij.labelers.ConstraintLabeler(task_prompts)
    ranks = labeler.rank(prompt, completions)            # 0 = best, ties share a rank
    record = ij.labelers.rank_to_comparison(prompt, completions, ranks)
"""

from instructjax.labelers.ranking import (QUALITY_DECIMALS, ConstraintLabeler, Labeler, dense_ranks,
                                          rank_to_comparison, unique_completions)
from instructjax.labelers.session import QUESTION, SessionSummary, label_session, parse_ranking

__all__ = [
    "QUALITY_DECIMALS", "QUESTION", "ConstraintLabeler", "Labeler", "SessionSummary", "dense_ranks",
    "label_session", "parse_ranking", "rank_to_comparison", "unique_completions",
]
