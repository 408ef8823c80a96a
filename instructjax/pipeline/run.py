"""`run_pipeline(config, workdir)`: the InstructGPT stages in order (`stages.pipeline_stages`: the
policy step `config.algorithm`, `config.rounds` rounds), one subfolder each; a rerun
skips finished stages (their `stage.json` exists) and resumes the interrupted one. As one job of several
processes (`config.parallel`) every process runs every stage (the task stage: process 0 alone) and process 0
writes the files; the processes meet after each stage. Every stage's config is
checked before anything is written (`stages.stage_configs`: values, fields the pipeline owns); each training
stage records its input files in its folder's inputs.json (`ij.train.Workdir.write_config`)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any, Union

import ml_collections

from instructjax import cpu_runtime, parallel
from instructjax.pipeline.files import write_json, writes_files
from instructjax.pipeline.stages import pipeline_stages, stage_configs
from instructjax.train.config import resolve_dtypes
from instructjax.train.workdir import Workdir

DONE_FILE = "stage.json"
# Stages without jax computations (plain Python, written files only): process 0 runs them, the others wait.
FIRST_PROCESS_STAGES = ("task",)


def run_pipeline(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike]) -> dict[str, Any]:
    """Run (or finish) every stage of `config` (experiments/configs/pipeline.py) in `workdir`;
    returns each stage's summary, the evaluation's included. The report is WORKDIR/report.md."""
    root, config = pathlib.Path(workdir), resolve_dtypes(config)  # a copy: "auto" dtypes decided once
    stage_configs(config, root)  # every stage's config is checked (values, owned fields) before anything is written
    parallel.initialize_distributed(**config.parallel)  # several processes: every one runs every stage below
    stages = pipeline_stages(config)
    # a rerun must use the same config once a stage has started; before, the config is rewritten
    Workdir.at(root).write_config(config, locked=any((root / name).exists() for name in stages))
    summaries = {}
    for name, stage in stages.items():
        done = root / name / DONE_FILE
        if parallel.first_process_flag(done.exists()):  # one answer for every process
            summaries[name] = json.loads(done.read_text())["summary"]
            logging.info("pipeline: stage %s already done", name)
            continue
        print(f"== pipeline stage: {name}", flush=True)
        start = time.perf_counter()
        runs_here = name not in FIRST_PROCESS_STAGES or writes_files()
        if runs_here:
            summaries[name] = stage(config, root)
            cpu_runtime.release_freed_memory()  # the next stage's peak, not this one's freed heap on top of it
            write_json(done, {"summary": summaries[name], "seconds": time.perf_counter() - start})
        parallel.sync_processes(f"pipeline stage {name}")  # the next stage reads what process 0 wrote
        if not runs_here:
            summaries[name] = json.loads(done.read_text())["summary"]
        print(f"== {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return summaries
