"""Reward normalisation after training (docs/formulas.md#reward-normalization): a bias so that reference
scores have mean 0
(InstructGPT), optionally a gain for std 1 (Ziegler et al.), folded into the score head."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np

NORMALIZATION_FILE = "reward_normalization.json"
REFERENCES = ("demonstrations", "sft_samples", "none")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """score = gain * raw_score + bias, fitted on `count` reference sequences."""

    gain: float = 1.0  # multiplies the raw score (1 unless unit_std)
    bias: float = 0.0  # added after the gain: -gain * mean of the raw reference scores
    reference: str = "none"  # what was scored: "demonstrations", "sft_samples" or "none"
    count: int = 0  # reference sequences scored
    raw_mean: float = 0.0  # mean of their raw scores
    raw_std: float = 1.0  # population std of their raw scores

    def apply(self, scores: Any) -> Any:
        return scores * self.gain + self.bias

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict, source: str = NORMALIZATION_FILE) -> "Normalization":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)}")
        return cls(**d)


def fit_normalization(reference_scores: Any, *, unit_std: bool = False, reference: str = "demonstrations"
                      ) -> Normalization:
    """Gain and bias that give the reference scores mean 0 (and std 1 with `unit_std`)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference={reference!r}: expected one of {REFERENCES}")
    x = np.asarray(reference_scores, np.float64).reshape(-1)
    if not len(x):
        raise ValueError(f"no {reference} scores to normalise on")
    if not np.isfinite(x).all():
        raise ValueError(f"{int((~np.isfinite(x)).sum())} of {len(x)} {reference} scores are not finite")
    mean, std = float(x.mean()), float(x.std())
    if unit_std and std <= 1e-12:
        raise ValueError(f"the {len(x)} {reference} scores are all equal ({mean:g}): cannot scale them to std 1")
    gain = 1.0 / std if unit_std else 1.0
    return Normalization(gain=gain, bias=-gain * mean, reference=reference, count=len(x), raw_mean=mean, raw_std=std)


def fold_normalization(params: dict, norm: Normalization) -> dict:
    """Params whose scalar head outputs the normalised score: kernel * gain, bias * gain + bias."""
    head = jax.device_get(params["score_head"])
    kernel, bias = np.asarray(head["kernel"]), np.asarray(head["bias"])
    new_head = {"kernel": (kernel.astype(np.float64) * norm.gain).astype(kernel.dtype),
                "bias": (bias.astype(np.float64) * norm.gain + norm.bias).astype(bias.dtype)}
    return {**params, "score_head": new_head}


def save_normalization(directory: str | os.PathLike, norm: Normalization, **extra: Any) -> str:
    """Write `reward_normalization.json` (the fitted gain and bias, plus `extra` notes) into `directory`."""
    path = os.path.join(os.fspath(directory), NORMALIZATION_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**norm.to_json(), **extra}, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def read_normalization(directory: str | os.PathLike) -> Optional[tuple[Normalization, dict]]:
    """(Normalization, extra notes) from `directory`, or None when it has no normalisation file."""
    path = os.path.join(os.fspath(directory), NORMALIZATION_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object")
    fields = {f.name for f in dataclasses.fields(Normalization)}
    return (Normalization.from_json({k: v for k, v in d.items() if k in fields}, path),
            {k: v for k, v in d.items() if k not in fields})
