"""Rates with 95% intervals and means with their 95% intervals: plain formulas (Python and numpy),
shared by the reward-model evaluation (`ij.rewards`) and the policy evaluation (`ij.evaluation`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["Rate", "mean_and_interval"]

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclasses.dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson score interval (95%)."""

    successes: float
    total: int

    @property
    def value(self) -> float:
        return self.successes / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson score interval: well behaved near 0 and 1 and for small totals."""
        if not self.total:
            return float("nan"), float("nan")
        n, p = self.total, self.value
        centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
        half = Z95 / (1 + Z95 ** 2 / n) * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n))
        return max(0.0, centre - half), min(1.0, centre + half)

    def to_json(self) -> dict[str, float]:
        """value, the interval's low and high ends, successes and total."""
        low, high = self.interval
        return {"value": self.value, "low": low, "high": high, "successes": self.successes, "total": self.total}


def mean_and_interval(x: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    x = np.asarray(x, np.float64)
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), float("nan")
    return float(x.mean()), float(Z95 * x.std(ddof=1) / math.sqrt(x.size))
