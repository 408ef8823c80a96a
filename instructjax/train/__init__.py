"""Training: optimizer and train state, the generic sharded step, the shared loop, SFT, DPO/IPO and PPO.

    state = ij.train.train_sft(config, workdir)        # config: experiments/configs/sft.py
    state = ij.train.train_dpo(config, workdir)        # config: experiments/configs/dpo.py
    state = ij.train.train_ppo(config, workdir)        # config: experiments/configs/ppo.py
"""

from instructjax.train import config, loop
from instructjax.train.checkpointing import Checkpointer
from instructjax.train.dpo import train_dpo
from instructjax.train.export import export_model
from instructjax.train.initial_model import load_initial_model
from instructjax.train.loop import LoopConfig, NonFiniteLossError
from instructjax.train.metrics import MetricsWriter, quiet_library_logs, read_metrics
from instructjax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from instructjax.train.ppo import train_ppo
from instructjax.train.sft import sft_loss_fn, train_sft
from instructjax.train.state import TrainState, abstract_state, init_state, state_shardings
from instructjax.train.step import accumulate_gradients, compile_step, make_train_step, with_derived_metrics
from instructjax.train.workdir import Workdir

__all__ = [
    "Checkpointer", "LoopConfig", "MetricsWriter", "NonFiniteLossError", "OptimConfig", "TrainState", "Workdir",
    "abstract_state", "accumulate_gradients", "compile_step", "config", "export_model", "init_state",
    "learning_rate_schedule", "load_initial_model", "loop", "make_optimizer", "make_train_step", "quiet_library_logs",
    "read_metrics", "sft_loss_fn", "state_shardings", "train_dpo", "train_ppo", "train_sft", "with_derived_metrics",
]
