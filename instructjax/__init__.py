"""instructjax: the InstructGPT recipe (SFT, reward model, PPO/PPO-ptx) in JAX/Flax.

Importing it changes nothing in the process; `ij.cpu_runtime.apply()` (called by the scripts in
`experiments/` and `benchmarks/`) sets the XLA:CPU process settings.
"""

__version__ = "0.1.0"

from instructjax import (checkpoints, cpu_runtime, data, datasets, evaluation, labelers, losses, models, parallel,
                         pipeline, rewards, rl, sampling, stats, tasks, tokenizers, train)

__all__ = ["checkpoints", "data", "datasets", "evaluation", "labelers", "losses", "models", "parallel", "pipeline",
           "rewards", "rl", "sampling", "stats", "tasks", "tokenizers", "train", "cpu_runtime"]
