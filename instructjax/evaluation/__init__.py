"""Evaluation of policies: batched sampling, pass rates with intervals, win rates, reward scores,
KL to a reference, and the pipeline's report."""

from instructjax.evaluation.metrics import Rate

__all__ = ["Rate"]
