"""instructjax: the InstructGPT recipe (SFT, reward model, PPO/PPO-ptx) in JAX/Flax."""

__version__ = "0.1.0"

from instructjax import cpu_runtime

cpu_runtime.apply()  # before any submodule can start a jax backend

from instructjax import (checkpoints, data, datasets, evaluation, labelers, losses, models, parallel, pipeline, rewards, rl,
                         sampling, tasks, tokenizers, train)

__all__ = ["checkpoints", "data", "datasets", "evaluation", "labelers", "losses", "models", "parallel", "pipeline",
           "rewards", "rl", "sampling", "tasks", "tokenizers", "train", "cpu_runtime"]
