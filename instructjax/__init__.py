"""instructjax: the InstructGPT recipe (SFT, reward model, PPO/PPO-ptx) in JAX/Flax."""

__version__ = "0.1.0"

from instructjax import checkpoints, data, datasets, losses, models, parallel, rewards, rl, sampling, tokenizers, train

__all__ = ["checkpoints", "data", "datasets", "losses", "models", "parallel", "rewards", "rl", "sampling", "tokenizers", "train"]
