"""Labelers write demonstrations (InstructGPT step 1) and rank the K completions of a prompt (step 2):
a rule-based labeler and demonstrator for the default task, and a terminal session where a person ranks.

    labeler = ij.labelers.ConstraintLabeler(task_prompts)
    ranks = labeler.rank(prompt, completions)            # 0 = best, ties share a rank
    record = ij.labelers.rank_to_comparison(prompt, completions, ranks)
    answer = ij.labelers.ConstraintDemonstrator().edit(task_prompt, sample)   # None: could not
"""

from instructjax.labelers.demonstrator import ConstraintDemonstrator, closeness
from instructjax.labelers.ranking import ConstraintLabeler, Labeler, rank_to_comparison, unique_completions
from instructjax.labelers.session import label_session

__all__ = ["ConstraintDemonstrator", "ConstraintLabeler", "Labeler", "closeness", "label_session",
           "rank_to_comparison", "unique_completions"]
