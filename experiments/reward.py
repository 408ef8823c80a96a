"""Reward-model training (InstructGPT step 2).

    python experiments/reward.py --config=experiments/configs/reward.py:tiny --workdir=runs/rm

Rerunning the same command in the same workdir resumes from its latest checkpoint. The normalised
reward model ends up in WORKDIR/export: `ij.rewards.load_reward_model("runs/rm")`.
"""

from absl import app, flags
from ml_collections import config_flags

import instructjax as ij
from instructjax.train.config import check_stage_config
import instructjax.rewards  # noqa: F401  (ij.rewards, until the package imports it)

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "reward config file (experiments/configs/reward.py:<preset>)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory of the run: checkpoints, metrics, histogram, export")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ij.train.quiet_library_logs()
    check_stage_config(_CONFIG.value, "reward", config_flags.get_config_filename(flags.FLAGS["config"]))
    ij.train.train_reward_model(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # XLA:CPU settings when jax will run on the CPU, before jax starts
    app.run(main)
