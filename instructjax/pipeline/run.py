"""`run_pipeline(config, workdir)`: the InstructGPT stages in order (`stages.pipeline_stages`: the
policy step `config.algorithm`, `config.rounds` rounds), one subfolder each; a rerun
skips finished stages (their `stage.json` exists) and resumes the interrupted one. Every stage's config is
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

from instructjax import cpu_runtime
from instructjax.pipeline.files import write_json
from instructjax.pipeline.stages import pipeline_stages, stage_configs
from instructjax.train.config import resolve_dtypes
from instructjax.train.workdir import Workdir

DONE_FILE = "stage.json"


def run_pipeline(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike]) -> dict[str, Any]:
    """Run (or finish) every stage of `config` (experiments/configs/pipeline.py) in `workdir`;
    returns each stage's summary, the evaluation's included. The report is WORKDIR/report.md."""
    root, config = pathlib.Path(workdir), resolve_dtypes(config)  # a copy: "auto" dtypes decided once
    stage_configs(config, root)  # every stage's config is checked (values, owned fields) before anything is written
    stages = pipeline_stages(config)
    # a rerun must use the same config once a stage has started; before, the config is rewritten
    Workdir.at(root).write_config(config, locked=any((root / name).exists() for name in stages))
    summaries = {}
    for name, stage in stages.items():
        done = root / name / DONE_FILE
        if done.exists():
            summaries[name] = json.loads(done.read_text())["summary"]
            logging.info("pipeline: stage %s already done", name)
            continue
        print(f"== pipeline stage: {name}", flush=True)
        start = time.perf_counter()
        summary = stage(config, root)
        seconds = time.perf_counter() - start
        cpu_runtime.release_freed_memory()  # the next stage's peak, not this one's freed heap on top of it
        write_json(done, {"summary": summary, "seconds": seconds})
        print(f"== {name} done in {seconds:.0f} s", flush=True)
        summaries[name] = summary
    return summaries
