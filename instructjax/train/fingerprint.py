"""A stage's input files and their content hashes (what WORKDIR/inputs.json records): the data files its
config names, the initial model's files (`init.path`, a tokenizer directory) and the reward model's
(`reward.path`)."""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

import ml_collections

from instructjax.rewards.io import EXPORT_DIR
from instructjax.train.config import config_value
from instructjax.train.ppo_rewards import uses_model

# Config keys (dotted) that list data files.
FILE_KEYS = ("data.train_files", "data.validation_files", "normalize.data.train_files",
             "normalize.data.validation_files", "ptx.data.train_files", "ptx.data.validation_files")


def file_sha256(path: pathlib.Path) -> str:
    """The sha256 of a file's content (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def input_files(config: ml_collections.ConfigDict) -> dict[str, list[pathlib.Path]]:
    """The files a stage reads, by the config key that names them; a FileNotFoundError naming the key
    of a file or model directory that is not there."""
    found = {key: [_existing(key, p) for p in config_value(config, key) or ()] for key in FILE_KEYS}
    init = config.init
    if init.source in ("hf", "gguf", "workdir") and init.path:
        found["init.path"] = _model_files("init.path", init.path, EXPORT_DIR if init.source == "workdir" else "")
    if init.source == "random" and init.tokenizer != "tiny":
        found["init.tokenizer"] = _model_files("init.tokenizer", init.tokenizer)
    if "reward" in config and uses_model(config.reward.source) and config.reward.path:
        export = pathlib.Path(config.reward.path, EXPORT_DIR).is_dir()  # a reward workdir or an export
        found["reward.path"] = _model_files("reward.path", config.reward.path, EXPORT_DIR if export else "")
    return {key: files for key, files in found.items() if files}


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Every input file of `config` (absolute path) -> its config key, sha256 and size in bytes."""
    return {str(path): {"key": key, "sha256": file_sha256(path), "size": path.stat().st_size}
            for key, paths in input_files(config).items() for path in paths}


def _existing(key: str, path: str) -> pathlib.Path:
    resolved = pathlib.Path(path).expanduser().absolute()
    if not resolved.is_file():
        raise FileNotFoundError(f"--config.{key}: {path} is not a file")
    return resolved


def _model_files(key: str, path: str, subdir: str = "") -> list[pathlib.Path]:
    """A model file, or every file of a model directory (`subdir` of `path`: an earlier stage's workdir is
    read through its export)."""
    resolved = pathlib.Path(path, subdir).expanduser().absolute()
    if resolved.is_file():
        return [resolved]
    if not resolved.is_dir():
        raise FileNotFoundError(f"--config.{key}: {resolved} is neither a file nor a directory")
    return sorted(p for p in resolved.rglob("*") if p.is_file())
