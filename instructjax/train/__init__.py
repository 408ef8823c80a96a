"""Training: optimizer factory (the shared loop and the SFT, reward and PPO trainers build on it)."""

from instructjax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer

__all__ = ["OptimConfig", "learning_rate_schedule", "make_optimizer"]
