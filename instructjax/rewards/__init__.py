"""Reward models (InstructGPT step 2): scoring, the K-choose-2 ranking objective, normalisation,
evaluation, export and loading.

    rm = ij.rewards.load_reward_model("runs/rm")          # a reward workdir or its export/
    scores = rm(tokens, mask)                              # float32 [B], normalised, jit-compiled
"""

from instructjax.rewards.evaluation import accuracy_by_family, comparison_metrics, pair_results
from instructjax.rewards.io import load_reward_model
from instructjax.rewards.scoring import sequence_scores

__all__ = ["accuracy_by_family", "comparison_metrics", "load_reward_model", "pair_results", "sequence_scores"]
