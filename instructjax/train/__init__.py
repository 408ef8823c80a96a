"""Training: optimizer and train state, the generic sharded step, the shared loop and setup, and every
trainer on them: SFT, the reward model, DPO/IPO and PPO (with its compiled update; GRPO/RLOO are its
advantage estimators).

    state = ij.train.train_sft(config, workdir)        # config: experiments/configs/sft.py
    state = ij.train.train_reward_model(config, workdir)  # config: experiments/configs/reward.py
    state = ij.train.train_dpo(config, workdir)        # config: experiments/configs/dpo.py
    state = ij.train.train_ppo(config, workdir)        # config: experiments/configs/ppo.py
"""

from instructjax.train import config, loop
from instructjax.train.checkpointing import Checkpointer
from instructjax.train.dpo import train_dpo
from instructjax.train.export import export_model
from instructjax.train.initial_model import load_initial_model
from instructjax.train.loop import LoopConfig, NonFiniteLossError
from instructjax.train.metrics import quiet_library_logs, read_metrics
from instructjax.train.optim import make_optimizer
from instructjax.train.ppo import train_ppo
from instructjax.train.ppo_update import PPOConfig, PPOState, init_ppo_state, make_ppo_update
from instructjax.train.reward import train_reward_model
from instructjax.train.sft import train_sft
from instructjax.train.state import abstract_state, init_state, state_shardings
from instructjax.train.step import compile_step, make_train_step
from instructjax.train.workdir import Workdir

__all__ = [
    "Checkpointer", "LoopConfig", "NonFiniteLossError", "PPOConfig", "PPOState", "Workdir", "abstract_state",
    "compile_step", "config", "export_model", "init_ppo_state", "init_state", "load_initial_model", "loop",
    "make_optimizer", "make_ppo_update", "make_train_step", "quiet_library_logs", "read_metrics", "state_shardings",
    "train_dpo", "train_ppo", "train_reward_model", "train_sft",
]
