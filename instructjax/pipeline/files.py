"""Small file helpers of the pipeline stages: atomic JSON, JSONL, and resumable sampling to a file. With
several processes (one job, one shared workdir) only process 0 writes; every process gets the same results."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from instructjax.evaluation.generation import Completions, SamplingConfig, iter_completions
from instructjax.models import ModelConfig
from instructjax.parallel import sync_processes
from instructjax.tokenizers import Prompt, Tokenizer


def writes_files() -> bool:
    """Whether this process writes the pipeline's files: process 0 of a multi-process job, or the only one."""
    return jax.process_index() == 0


def write_json(path: pathlib.Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically (a kill leaves the old file or the new one)."""
    if not writes_files():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_jsonl(path: pathlib.Path, records: Iterable[dict]) -> int:
    """Records one a line, written atomically; returns how many."""
    if not writes_files():
        return sum(1 for _ in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def _completed_batches(path: pathlib.Path) -> list[dict]:
    """The batches a file of `sample_to_file` already holds; a last line cut short by a kill is dropped."""
    if not path.exists():
        return []
    batches = []
    for line in path.read_text().splitlines():
        try:
            batches.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return batches


@contextlib.contextmanager
def _append_batches(path: pathlib.Path, done: list[dict]) -> Iterator[Callable[[dict], None]]:
    """append(record): one batch a line, synced to disk at once, after the complete batches `done` (the file is
    rewritten with them first: that drops a torn last line). Processes other than 0 write nothing."""
    if not writes_files():
        yield lambda record: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(b, ensure_ascii=False) + "\n" for b in done)
        f.flush()

        def append(record: dict) -> None:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        yield append


def sample_to_file(path: pathlib.Path, cfg: ModelConfig, params: Any, tokenizer: Tokenizer,
                   prompts: Sequence[Prompt], config: SamplingConfig, rng: jax.Array, desc: str) -> Completions:
    """Completions of `prompts`, each finished batch appended to `path` (JSONL, one batch a line) at once.
    Rerun after a kill, it continues after the last complete batch with the same draws."""
    done = _completed_batches(path)
    start = done[-1]["start"] + len(done[-1]["texts"]) if done else 0
    sync_processes(f"read {path}")  # every process has read the file before process 0 rewrites it
    with _append_batches(path, done) as append:
        if start < len(prompts):
            for batch in iter_completions(cfg, params, tokenizer, prompts, config, rng, start=start, desc=desc):
                record = {"start": batch.start, "texts": batch.texts, "ended": batch.ended.tolist(),
                          "lengths": batch.lengths.tolist()}
                append(record)
                done.append(record)
    texts = [t for b in done for t in b["texts"]]
    if len(texts) != len(prompts):
        raise ValueError(f"{path}: holds {len(texts)} prompts' completions, expected {len(prompts)} "
                         "(written by a different stage config? delete it to resample)")
    return Completions(0, texts, np.array([e for b in done for e in b["ended"]], bool).reshape(len(texts), config.k),
                       np.array([n for b in done for n in b["lengths"]], int).reshape(len(texts), config.k))
