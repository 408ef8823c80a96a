"""Metrics of a run to `metrics.jsonl` (one JSON object a line, with its step) and TensorBoard.

On resume from step s, lines after s (written after the checkpoint the run resumes from) are
dropped and TensorBoard purges its events after s, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from typing import Mapping, Optional

import jax
import tensorboardX
from absl import logging as absl_logging


def read_metrics(path: pathlib.Path) -> list[dict]:
    """The records of a metrics.jsonl; a last line cut short by a kill is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def data_tally(path: pathlib.Path) -> dict[str, int]:
    """The data counters of a run's metrics.jsonl (`data/*` of its last record that has them: records read,
    prompts truncated, records dropped per reason); empty when it logged none or has no metrics.jsonl."""
    tallies = [r for r in read_metrics(path) if any(k.startswith("data/") for k in r)] if path.exists() else []
    return {k.removeprefix("data/"): v for k, v in tallies[-1].items() if k.startswith("data/")} if tallies else {}


class MetricsWriter:
    """Appends `{"step": s, **metrics}` lines to `jsonl_path` and scalars to TensorBoard (process 0 only)."""

    def __init__(self, jsonl_path: pathlib.Path, tensorboard_dir: pathlib.Path, resume_step: Optional[int] = None):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if jsonl_path.exists():
            kept = [r for r in read_metrics(jsonl_path) if resume_step is not None and r["step"] <= resume_step]
            jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._jsonl = open(jsonl_path, "a")
        purge = None if resume_step is None else resume_step + 1
        self._tensorboard = tensorboardX.SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        values = {k: _plain(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            self._tensorboard.add_scalar(key, float(value), step)

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.active:
            self._tensorboard.add_text(tag, text, step)

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._tensorboard.close()


def _plain(value: float) -> float | int | str:
    """A JSON-safe number (NaN and inf as strings)."""
    if isinstance(value, int):
        return value
    value = float(value)
    return value if math.isfinite(value) else str(value)


class _DropLibraryInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(f"/{name}/" in record.pathname for name in QUIET_LIBRARIES)


QUIET_LIBRARIES = ("orbax", "grain", "tensorflow_datasets")


def quiet_library_logs() -> None:
    """Keep INFO messages of instructjax on the console, drop those of checkpointing and data libraries
    (Orbax logs several lines per array written)."""
    absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())
