"""Reward models on disk: a transformers `*ForSequenceClassification` checkpoint with the
normalisation folded in, plus `reward_normalization.json`; and `load_reward_model` to score with it."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np

from instructjax.checkpoints import hf
from instructjax.models import ModelConfig
from instructjax.rewards.normalization import Normalization, fold_normalization, read_normalization, \
    save_normalization
from instructjax.rewards.scoring import sequence_scores
from instructjax.tokenizers import Tokenizer

EXPORT_DIR = "export"  # where a reward workdir keeps its final exported model


def export_reward_model(path: str | os.PathLike, cfg: ModelConfig, params: dict, tokenizer: Optional[Tokenizer],
                        normalization: Optional[Normalization] = None) -> pathlib.Path:
    """Save the reward model (normalisation folded into the score head) in Hugging Face format.

    transformers has no score bias: for LayerNorm models (GPT-2) `save_hf` folds it exactly into
    the final norm; for RMS-norm models it is kept as `instructjax_score_bias` in config.json, and
    transformers' scores are lower by it (recorded as `transformers_offset` in the JSON file).
    """
    path = pathlib.Path(path)
    normalization = normalization or Normalization()
    folded = fold_normalization(jax.device_get(params), normalization)
    with warnings.catch_warnings():  # the missing score bias is expected and recorded below
        warnings.filterwarnings("ignore", message=r"save_hf: .* has no score bias")
        hf.save_hf(path, cfg, folded, tokenizer=tokenizer)
    offset = float(json.loads((path / hf.CONFIG_FILE).read_text()).get(hf.SCORE_BIAS_KEY, 0.0))
    save_normalization(path, normalization, folded_into_params=True, transformers_offset=offset)
    return path


def _is_checkpoint(path: pathlib.Path) -> bool:
    return (path / hf.CONFIG_FILE).is_file() and any((path / f).is_file() for f in (hf.WEIGHTS_FILE, hf.INDEX_FILE))


def _export_dir(path: pathlib.Path) -> pathlib.Path:
    """The HF directory of `path`: a reward workdir's `export/`, or `path` itself."""
    if _is_checkpoint(path / EXPORT_DIR):
        return path / EXPORT_DIR
    if _is_checkpoint(path):
        return path
    raise FileNotFoundError(f"{path}: no reward model here (expected {hf.CONFIG_FILE} and {hf.WEIGHTS_FILE} in it "
                            f"or in {path / EXPORT_DIR}, as written by export_reward_model or experiments/reward.py "
                            "with config.export=True)")


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """A loaded reward model: `rm(tokens, mask)` -> float32 [B] normalised scores (jit-compiled).

    `rm.score_fn(params, tokens, mask)` is the same pure function, for use inside other jits (PPO).
    """

    cfg: ModelConfig
    params: Any
    tokenizer: Optional[Tokenizer]
    normalization: Optional[Normalization]  # already folded into params; None for a foreign checkpoint
    path: Optional[pathlib.Path] = None

    @functools.cached_property
    def score_fn(self) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
        return jax.jit(functools.partial(sequence_scores, self.cfg))

    def score(self, tokens: Any, mask: Any) -> jax.Array:
        """float32 [B] scores of tokens int32 [B, T] at each row's last real token (mask bool [B, T])."""
        return self.score_fn(self.params, tokens, mask)

    __call__ = score


def load_reward_model(path: str | os.PathLike, *, dtype: Optional[str] = None) -> RewardModel:
    """A reward model from an export directory or a reward workdir (its `export/`), or any transformers
    `*ForSequenceClassification` checkpoint with one label. `dtype` as in `load_hf`."""
    directory = _export_dir(pathlib.Path(path))
    cfg, params = hf.load_hf(directory, dtype=dtype)
    if "score_head" not in params:
        raise ValueError(f"{directory}: a language model, not a reward model (expected a "
                         "*ForSequenceClassification checkpoint with num_labels=1)")
    found = read_normalization(directory)
    tokenizer = Tokenizer.from_pretrained(directory) if (directory / "tokenizer.json").is_file() else None
    params = jax.tree.map(np.asarray, params)
    return RewardModel(cfg, params, tokenizer, None if found is None else found[0], directory)
