"""GRPO / Dr.GRPO / RLOO configs: the PPO trainer (experiments/configs/ppo.py, every field the same)
with a group baseline instead of a value function: `rollout.group_size` responses per prompt, the
advantage of each from its group's rewards (docs/formulas.md#group-advantages).

    python experiments/grpo.py --config=experiments/configs/grpo.py:tiny --workdir=runs/grpo
    python experiments/grpo.py --config=experiments/configs/grpo.py:smollm2 --workdir=runs/grpo \\
        --config.init.path=runs/sft --config.reward.source=function \\
        --config.reward.function=instructjax.tasks.rewards:constraint_fraction --config.advantage=rloo
"""

import importlib.util
import pathlib

import ml_collections

PRESETS = ("tiny", "smollm2")


def _ppo_config(preset: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("instructjax_ppo_config", pathlib.Path(__file__).with_name("ppo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown grpo preset {arg!r}: expected one of {PRESETS}")
    config = _ppo_config(arg)
    config.advantage = "grpo"
    config.kl.in_loss = True  # GRPO: beta * k3 in the loss (Shao et al. 2024)
    config.kl.estimator = "k3"
    config.kl.init_coef = 0.04
    if arg == "tiny":
        config.batch_size = 8  # prompts (one per fake CPU device in the sharding tests); x 4 responses
        config.rollout.group_size = 4
    else:
        config.batch_size = 8  # prompts; x 8 responses = 64 episodes, as the PPO preset
        config.rollout.group_size = 8
        config.optim.lr = 1e-6
    return config
