"""RL pieces of the InstructGPT recipe: advantages, KL penalties and controllers, per-token rewards and
PPO losses (pure array formulas), rollouts and reward functions. The compiled PPO update that
combines them is a trainer: `ij.train.make_ppo_update` (instructjax/train/ppo_update.py)."""

from instructjax.rl.advantages import gae, group_advantages, rloo_advantages, whiten
from instructjax.rl.kl import AdaptiveKLController, FixedKLController, kl_penalty
from instructjax.rl.reward_functions import RewardFunctionError
from instructjax.rl.per_token_rewards import token_rewards
from instructjax.rl.forwards import response_logits_and_values
from instructjax.rl.frozen import frozen_model
from instructjax.rl.in_graph_rewards import reward_model_fn
from instructjax.rl.rollout import Rollout, make_scorer
from instructjax.rl.sampler import SamplingSettings, sample_responses
from instructjax.rl.value_head import add_value_head, lm_params

__all__ = ["gae", "group_advantages", "rloo_advantages", "whiten", "kl_penalty", "AdaptiveKLController",
           "FixedKLController", "RewardFunctionError", "token_rewards", "Rollout", "SamplingSettings", "add_value_head",
           "frozen_model", "lm_params", "make_scorer", "response_logits_and_values", "reward_model_fn",
           "sample_responses"]
