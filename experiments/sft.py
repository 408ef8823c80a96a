"""Supervised fine-tuning (InstructGPT step 1).

    python experiments/sft.py --config=experiments/configs/sft.py:tiny --workdir=runs/sft

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

import instructjax as ij
from instructjax.train.config import check_stage_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "SFT config file (experiments/configs/sft.py:<preset>)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory of the run: checkpoints, metrics, samples, export")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ij.train.quiet_library_logs()
    check_stage_config(_CONFIG.value, "sft", config_flags.get_config_filename(flags.FLAGS["config"]))
    ij.train.train_sft(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # XLA:CPU settings when jax will run on the CPU, before jax starts
    app.run(main)
