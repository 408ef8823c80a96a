"""A run's directory: its config, checkpoints, metrics, samples and exported model."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
from typing import Any, Optional, Union

import jax
import ml_collections

PathLike = Union[str, os.PathLike]
_MISSING = object()
# Config keys (their last part) a rerun may change without being a different run: accepting changed inputs,
# and where a process sits in a multi-process job (differs between its processes and restarts).
UNCOMPARED = ("accept_changed_inputs", "coordinator_address", "process_id")


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

    @property
    def inputs_file(self) -> pathlib.Path:
        return self.root / "inputs.json"

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint was finalized here (Orbax names a finished one by its step)."""
        return self.checkpoints.is_dir() and any(p.name.isdigit() for p in self.checkpoints.iterdir())

    def write_config(self, config: ml_collections.ConfigDict, inputs: Optional[dict[str, Any]] = None, *,
                     locked: bool = True) -> None:
        """Write `config.json`, and `inputs.json` from `inputs` (`fingerprint.fingerprint(config)`).

        A `locked` workdir (one with results: a checkpoint) must have been made by the same config
        (rerunning the same command resumes; a changed config needs a fresh workdir) and, when `inputs`
        are given, the same input files, unless `config.accept_changed_inputs`, which records the change
        in inputs.json's history. An unlocked one is rewritten. Nothing is written before these checks.
        """
        new, writes = config_to_dict(config), {}
        old = _read_json(self.config_file)
        changed = [] if old is None else sorted(_diff(old, new))
        if changed and locked:
            details = "; ".join(f"{k}: {_at(old, k)!r} -> {_at(new, k)!r}" for k in changed[:10])
            raise ValueError(f"{self.config_file} was written by a different config ({details}). "
                             "Resuming needs the same config: use a fresh --workdir for a new run.")
        if changed:
            print(f"{self.root}: no checkpoint yet: config.json rewritten ({', '.join(changed[:10])} changed)")
        if old is None or changed:
            writes[self.config_file] = new
        if inputs is not None:
            record = self._inputs_record(inputs, locked, bool(config.get("accept_changed_inputs")))
            if record != _read_json(self.inputs_file):
                writes[self.inputs_file] = record
        if writes and jax.process_index() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for path, value in writes.items():
                _write_json(path, value)

    def _inputs_record(self, inputs: dict[str, Any], locked: bool, accept: bool) -> dict[str, Any]:
        """inputs.json's new content: `inputs` and the history of accepted changes; a ValueError naming
        the first changed file when the workdir is `locked` and the change is not `accept`ed."""
        old = _read_json(self.inputs_file)
        if old is None:
            if locked:
                print(f"{self.root}: no inputs.json (a workdir of an earlier version): the input files are recorded "
                      "now; changes before this run cannot be seen")
            return {"files": inputs, "history": []}
        changes = input_changes(old["files"], inputs)
        if changes and locked and not accept:
            path, (before, after) = next(iter(changes.items()))
            raise ValueError(
                f"{path} ({(before or after)['key']}) changed since {self.inputs_file} was written: "
                f"{_describe(before)} -> {_describe(after)} ({len(changes)} changed file(s)). The checkpoints were "
                "trained on the old content: use a fresh --workdir for a run on the new one, or pass "
                "--config.accept_changed_inputs=True to resume on it (the change is recorded in inputs.json)")
        if changes and locked:
            print(f"{self.root}: resuming on {len(changes)} changed input file(s), recorded in {self.inputs_file}")
            entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "accepted": {path: {"old": before, "new": after} for path, (before, after) in changes.items()}}
            return {"files": inputs, "history": old["history"] + [entry]}
        if changes:
            print(f"{self.root}: no checkpoint yet: inputs.json rewritten ({len(changes)} changed file(s))")
        return {"files": inputs, "history": old["history"]}


def input_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Optional[dict], Optional[dict]]]:
    """path -> (old entry, new entry) of the input files added, removed or changed (None: absent)."""
    return {path: (old.get(path), new.get(path)) for path in sorted(old.keys() | new.keys())
            if old.get(path) != new.get(path)}


def _describe(entry: Optional[dict[str, Any]]) -> str:
    return "absent" if entry is None else f"sha256 {entry['sha256'][:12]}, {entry['size']} bytes"


def _read_json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: pathlib.Path, value: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as JSON-able nested dicts (tuples become lists)."""
    return json.loads(config.to_json(sort_keys=True))


def _diff(old: Any, new: Any, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = set()
        for key in old.keys() | new.keys():
            out |= _diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}{key}.")
        return out
    key = prefix.rstrip(".")
    return set() if old == new or key.rpartition(".")[2] in UNCOMPARED else {key}


def _at(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return "<missing>"
        tree = tree[key]
    return tree

