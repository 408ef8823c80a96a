"""DPO / IPO: the policy learns the preferences of comparisons directly, without a reward model.

    python experiments/dpo.py --config=experiments/configs/dpo.py:tiny --workdir=runs/dpo
    python experiments/dpo.py --config=experiments/configs/dpo.py:tiny --workdir=runs/ipo --config.loss=ipo

Rerunning the same command in the same workdir resumes from its latest checkpoint (the reference
logprobs, computed once, from WORKDIR/reference/). The policy ends up in WORKDIR/export.
"""

from absl import app, flags
from ml_collections import config_flags

import instructjax as ij
from instructjax.train.config import check_stage_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "DPO config file (experiments/configs/dpo.py:<preset>)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory of the run: checkpoints, metrics, reference logprobs, "
                               "export")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    ij.train.quiet_library_logs()
    check_stage_config(_CONFIG.value, "dpo", config_flags.get_config_filename(flags.FLAGS["config"]))
    ij.train.train_dpo(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # XLA:CPU settings when jax will run on the CPU, before jax starts
    app.run(main)
