"""instructjax: the InstructGPT recipe (SFT, reward model, PPO/PPO-ptx) in JAX/Flax."""

from instructjax import models

__version__ = "0.1.0"
__all__ = ["models"]
