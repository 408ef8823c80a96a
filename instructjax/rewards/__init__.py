"""Reward models (InstructGPT step 2): scoring, the K-choose-2 ranking objective, normalisation,
evaluation, export and loading.

    rm = ij.rewards.load_reward_model("runs/rm")          # a reward workdir or its export/
    scores = rm(tokens, mask)                              # float32 [B], normalised, jit-compiled
"""

from instructjax.rewards.evaluation import (ComparisonScores, accuracy_by_family, comparison_metrics, pair_results,
                                           score_histogram)
from instructjax.rewards.io import RewardModel, export_reward_model, load_reward_model
from instructjax.rewards.normalization import (NORMALIZATION_FILE, Normalization, fit_normalization,
                                               fold_normalization, read_normalization, save_normalization)
from instructjax.rewards.objective import (RewardLossConfig, derived_metrics, ranking_loss_sums, reward_loss,
                                           reward_loss_fn)
from instructjax.rewards.references import demonstration_scores, sample_scores
from instructjax.rewards.scoring import (completion_scores, init_score_head, last_token_index,
                                         reward_params_from_lm, sequence_scores)

__all__ = [
    "NORMALIZATION_FILE", "ComparisonScores", "Normalization", "RewardLossConfig", "RewardModel",
    "accuracy_by_family", "comparison_metrics", "completion_scores", "demonstration_scores", "derived_metrics",
    "export_reward_model", "fit_normalization", "fold_normalization", "init_score_head", "last_token_index",
    "load_reward_model", "pair_results", "ranking_loss_sums", "read_normalization", "reward_loss", "reward_loss_fn",
    "reward_params_from_lm", "sample_scores", "save_normalization", "score_histogram", "sequence_scores",
]
