"""A run's directory: its config, checkpoints, metrics, samples and exported model."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Union

import jax
import ml_collections

PathLike = Union[str, os.PathLike]
_MISSING = object()
# Where a process sits in a multi-process job: differs between the processes and restarts of one run.
PLACEMENT_FIELDS = ("parallel.coordinator_address", "parallel.process_id")


@dataclasses.dataclass(frozen=True)
class Workdir:
    """Where everything of one run goes (a workdir holds all of a run: docs/architecture.md, "State on disk")."""

    root: pathlib.Path

    @classmethod
    def at(cls, path: PathLike) -> "Workdir":
        return cls(pathlib.Path(path).expanduser().absolute())

    @property
    def config_file(self) -> pathlib.Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.root / "checkpoints"

    @property
    def metrics_file(self) -> pathlib.Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> pathlib.Path:
        return self.root / "tensorboard"

    @property
    def samples(self) -> pathlib.Path:
        return self.root / "samples"

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    @property
    def export(self) -> pathlib.Path:
        return self.root / "export"

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Write `config.json` (process 0); a workdir that already has one must have been made by the same
        config (rerunning the same command resumes; a changed config needs a fresh workdir), except for
        `PLACEMENT_FIELDS` (of any section)."""
        new = config_to_dict(config)
        if self.config_file.exists():
            old = json.loads(self.config_file.read_text())
            changed = sorted(k for k in _diff(old, new) if not k.endswith(PLACEMENT_FIELDS))
            if changed:
                details = "; ".join(f"{k}: {_at(old, k)!r} -> {_at(new, k)!r}" for k in changed[:10])
                raise ValueError(f"{self.config_file} was written by a different config ({details}). "
                                 "Resuming needs the same config: use a fresh --workdir for a new run.")
            return
        if jax.process_index() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.config_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
            tmp.replace(self.config_file)


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON-able nested dicts (tuples become lists)."""
    return json.loads(config.to_json(sort_keys=True))


def _diff(old: Any, new: Any, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = set()
        for key in old.keys() | new.keys():
            out |= _diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}{key}.")
        return out
    return set() if old == new else {prefix.rstrip(".")}


def _at(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return "<missing>"
        tree = tree[key]
    return tree

