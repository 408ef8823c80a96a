"""RL pieces of the InstructGPT recipe: advantages, KL penalties and controllers."""

from instructjax.rl.advantages import gae, masked_mean, masked_var, whiten
from instructjax.rl.kl import AdaptiveKLController, FixedKLController, kl_penalty

__all__ = ["gae", "whiten", "masked_mean", "masked_var", "kl_penalty", "AdaptiveKLController",
           "FixedKLController"]
