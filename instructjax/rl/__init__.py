"""RL pieces of the InstructGPT recipe: advantages, KL penalties and controllers, per-token rewards and
PPO losses (pure array formulas), rollouts and reward functions. The compiled PPO update that
combines them is a trainer: `ij.train.make_ppo_update` (instructjax/train/ppo_update.py)."""

from instructjax.rl.advantages import gae, group_advantages, masked_mean, masked_var, rloo_advantages, whiten
from instructjax.rl.kl import AdaptiveKLController, FixedKLController, KLController, kl_penalty
from instructjax.rl.reward_functions import (NamedRewardFunction, RewardFunction, RewardFunctionError,
                                             call_reward_function, resolve_reward_function, resolve_reward_functions)
from instructjax.rl.ppo import entropy_from_logits, explained_variance, policy_loss, value_loss
from instructjax.rl.rewards import last_valid_index, no_eos_penalty, token_rewards
from instructjax.rl.rollout import (VALUE_HEAD, Rollout, SamplingSettings, add_value_head, frozen_model, lm_params,
                                    make_scorer, response_logits_and_values, response_logprobs, response_values,
                                    reward_model_fn, sample_responses, token_count_reward)

__all__ = ["gae", "group_advantages", "rloo_advantages", "whiten", "masked_mean", "masked_var", "kl_penalty", "AdaptiveKLController",
           "FixedKLController", "KLController", "entropy_from_logits", "explained_variance", "policy_loss", "value_loss",
           "last_valid_index", "no_eos_penalty", "token_rewards", "Rollout", "SamplingSettings", "make_scorer",
           "response_logprobs", "response_values", "reward_model_fn", "sample_responses", "token_count_reward",
           "VALUE_HEAD", "add_value_head", "lm_params", "response_logits_and_values", "frozen_model",
           "NamedRewardFunction", "RewardFunction", "RewardFunctionError", "call_reward_function",
           "resolve_reward_function", "resolve_reward_functions"]
