"""Evaluation of policies: batched sampling, pass rates with intervals, win rates, reward scores,
KL to a reference, and the pipeline's report."""

from instructjax.evaluation.generation import Completions, SamplingConfig, iter_completions
from instructjax.evaluation.metrics import Rate, mean_and_interval, pass_rates, win_rate
from instructjax.evaluation.policies import kl_to_reference, reward_scores

__all__ = ["Completions", "Rate", "SamplingConfig", "iter_completions", "kl_to_reference",
           "mean_and_interval", "pass_rates", "reward_scores", "win_rate"]
