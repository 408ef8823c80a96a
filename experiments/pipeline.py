"""The InstructGPT pipeline as one job (what `make demo` runs):

    python experiments/pipeline.py --config=experiments/configs/pipeline.py:quick --workdir=runs/demo

Stages, one subfolder of the workdir each: task, demonstrations, sft, comparisons, reward, the policy
step (`--config.algorithm=ppo|grpo|rloo|dpo`, a folder of that name), ppo_ptx, the later rounds'
comparisons_rR, reward_rR and <algorithm>_rR (`--config.rounds=N`), evaluation; the report is
WORKDIR/report.md. Rerunning the same command skips finished stages and resumes the interrupted one.
As one job of several processes, each runs the same command with `--config.parallel.multi_host=True`
(and the coordinator's address, the process count and its id: docs/pipeline.md#several-processes).
"""

from absl import app, flags
from ml_collections import config_flags

import instructjax as ij
from instructjax.train.config import check_stage_config

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "pipeline config file (experiments/configs/pipeline.py:<preset>)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory of the run: one subfolder per stage, report.md")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ij.train.quiet_library_logs()
    check_stage_config(_CONFIG.value, "pipeline", config_flags.get_config_filename(flags.FLAGS["config"]))
    try:
        ij.pipeline.run_pipeline(_CONFIG.value, _WORKDIR.value)
    except ij.pipeline.LabelingNeeded as waiting:  # comparisons.labeler='human': a person ranks first
        print(waiting)
        return 3
    print(f"report: {_WORKDIR.value}/report.md")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # XLA:CPU settings when jax will run on the CPU, before jax starts
    app.run(main)
