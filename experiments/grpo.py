"""GRPO / Dr.GRPO / RLOO: the PPO trainer with a group baseline instead of a value function
(docs/ppo.md); the same script as experiments/ppo.py, with the grpo configs.

    python experiments/grpo.py --config=experiments/configs/grpo.py:tiny --workdir=runs/grpo \\
        --config.advantage=grpo|drgrpo|rloo

Rerunning the same command in the same workdir resumes from its latest checkpoint. The final
policy is exported to WORKDIR/export (HF format with the tokenizer).
"""

import pathlib
import runpy

if __name__ == "__main__":
    runpy.run_path(str(pathlib.Path(__file__).with_name("ppo.py")), run_name="__main__")
