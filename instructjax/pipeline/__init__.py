"""The InstructGPT pipeline as one job: task data, demonstrations, SFT, comparisons, reward model,
PPO, evaluation and report (experiments/pipeline.py).

    summaries = ij.pipeline.run_pipeline(config, "runs/demo")   # config: experiments/configs/pipeline.py
"""

from instructjax.pipeline.run import run_pipeline
from instructjax.pipeline.stages import LabelingNeeded, stage_configs

__all__ = ["LabelingNeeded", "run_pipeline", "stage_configs"]
