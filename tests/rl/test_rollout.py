"""The rollout path: the sampler's logprobs equal the training forward's for the same response
tokens; frozen models kept in bf16 (reference and reward): params cast once, scores and reference
logprobs close to the float32 ones; the reward as the weighted sum of its sources."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import models, rl
from instructjax.rewards.scoring import reward_params_from_lm
from instructjax.testing.prompts import common_token, left_padded
from instructjax.train import ppo_update
from instructjax.models.functional import init_params
from instructjax.rl.in_graph_rewards import token_count_reward
from instructjax.rl.forwards import response_values
from instructjax.rl.rollout import assemble
from instructjax.rl.value_head import VALUE_HEAD

CFG = models.get_preset("tiny")


@functools.lru_cache(maxsize=None)
def sample():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(10, 200, size=(8, 6)), jnp.int32)
    policy = init_params(CFG, jax.random.key(0))
    settings = rl.SamplingSettings(max_new_tokens=8, eos_id=3, pad_id=0)
    out = rl.sample_responses(CFG, policy, tokens, jnp.ones(tokens.shape, bool), rng=jax.random.key(1),
                              settings=settings)
    return policy, reward_params_from_lm(CFG, policy, jax.random.key(2)), out


def test_frozen_model_casts_params_once_and_keeps_the_scalar_head_float32():
    policy, reward, _ = sample()
    cfg, params = rl.frozen_model(CFG, reward, "bfloat16")
    assert cfg.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(rl.lm_params(params)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params[VALUE_HEAD]))
    same_cfg, same = rl.frozen_model(CFG, policy)  # "": the model's own compute dtype (float32 here)
    assert same_cfg == CFG
    jax.tree.map(np.testing.assert_array_equal, same, policy)


def test_bf16_reference_and_reward_are_close_to_float32():
    policy, reward, out = sample()

    def score(dtype):
        ref_cfg, ref = rl.frozen_model(CFG, policy, dtype)
        rm_cfg, rm = rl.frozen_model(CFG, reward, dtype)
        return jax.jit(rl.make_scorer(ref_cfg, rl.reward_model_fn(rm_cfg), temperature=1.0))(ref, rm, out)

    f32, bf16 = score("float32"), score("bfloat16")
    assert bool(jnp.any(f32.ref_logprobs != bf16.ref_logprobs))  # the bf16 path did run in bf16
    np.testing.assert_allclose(bf16.ref_logprobs, f32.ref_logprobs, atol=0.02)
    np.testing.assert_allclose(bf16.raw_scores, f32.raw_scores, atol=0.02 * float(jnp.max(jnp.abs(f32.raw_scores))))
    np.testing.assert_array_equal(bf16.sample_logprobs, f32.sample_logprobs)


def test_reward_is_the_weighted_sum_of_the_in_graph_source_and_the_function_scores():
    policy, _, out = sample()
    count = token_count_reward(42)
    functions = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8)), jnp.float32)
    weighted = jax.jit(rl.make_scorer(CFG, count, temperature=1.0, no_eos_penalty_value=1.0, weights=(0.5, 2.0, -1.0)))
    rollout = weighted(policy, None, out, functions)
    counts = count(None, *rl.rollout.assemble(out), out.mask)
    np.testing.assert_array_equal(rollout.source_scores, jnp.stack([counts, *functions], axis=-1))
    np.testing.assert_allclose(rollout.raw_scores, 0.5 * counts + 2.0 * functions[0] - functions[1], rtol=1e-6)
    np.testing.assert_allclose(rollout.scores, rollout.raw_scores - 1.0 * ~out.ended, rtol=1e-6)  # on the total
    alone = jax.jit(rl.make_scorer(CFG, None, temperature=1.0, no_eos_penalty_value=None))(policy, None, out, functions)
    np.testing.assert_allclose(alone.raw_scores, functions[0] + functions[1], rtol=1e-6)  # no weights: all 1
    np.testing.assert_array_equal(alone.ref_logprobs, rollout.ref_logprobs)
    with pytest.raises(ValueError, match="2 weights for 3 reward sources"):
        rl.make_scorer(CFG, count, temperature=1.0, weights=(1.0, 1.0))(policy, None, out, functions)
    with pytest.raises(ValueError, match="no reward source"):
        rl.make_scorer(CFG, None, temperature=1.0)(policy, None, out)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_the_training_forward(temperature):
    """f32 tiny model, prompts of 8 lengths, some responses ending early with EOS: the logprob the
    sampler recorded for each response token equals the one the PPO path recomputes from the
    assembled rollout, in the scorer (reference = policy here) and in the update's forward (separate
    value model, and value head on the policy trunk). Off by one position, every token differs."""
    policy = init_params(CFG, jax.random.key(0))
    value = init_params(CFG, jax.random.key(1), head="scalar")
    tokens, mask = left_padded((3, 9, 6, 2, 7, 5, 8, 4), CFG.vocab_size)
    settings = rl.SamplingSettings(max_new_tokens=10, temperature=temperature, pad_id=0)

    def draw(settings):
        return rl.sample_responses(CFG, policy, jnp.asarray(tokens), jnp.asarray(mask), rng=jax.random.key(3),
                                   settings=settings)

    out = draw(dataclasses.replace(settings, eos_id=common_token(draw(settings).tokens)))
    lengths = np.asarray(out.mask).sum(-1)
    assert np.sum(lengths < 10) >= 2 and not out.ended.all(), lengths  # several end early, not all

    rollout = jax.jit(rl.make_scorer(CFG, token_count_reward(7), temperature=temperature))(policy, None, out)
    valid = np.asarray(rollout.response_mask)
    sampled = np.asarray(rollout.sample_logprobs)
    np.testing.assert_array_equal(sampled, out.logprobs)

    def assert_equals_sampled(recomputed):
        recomputed = np.asarray(recomputed)
        np.testing.assert_allclose(recomputed[valid], sampled[valid], rtol=0, atol=1e-5)
        assert (recomputed[~valid] == 0).all() and (sampled[~valid] == 0).all()

    assert_equals_sampled(rollout.ref_logprobs)  # rl.response_logprobs
    _, separate, _ = ppo_update.response_forward(CFG, CFG, temperature, (policy, value), rollout)
    assert_equals_sampled(separate)
    shared_policy = rl.add_value_head(CFG, policy, jax.random.key(2))
    _, shared, _ = ppo_update.response_forward(CFG, None, temperature, (shared_policy, None), rollout)
    assert_equals_sampled(shared)


def test_a_fresh_value_head_predicts_zero_and_learns():
    """The value head PPO adds (value.init 'shared', and the head of a 'policy' value network) starts at
    zero: every response token's value is 0, so the first advantages are sums of the rewards ahead (a random head
    made them noise: docs/gold_reward.md), and its gradient towards the returns is not zero."""
    policy, _, out = sample()
    tokens, attention = assemble(out)
    params = rl.add_value_head(CFG, policy)
    values = response_values(CFG, params, tokens, attention, out.mask)
    assert out.mask.any() and (np.asarray(values) == 0).all()

    def value_loss(head):
        v = response_values(CFG, {**params, VALUE_HEAD: head}, tokens, attention, out.mask)
        return jnp.sum(jnp.where(out.mask, (v - 1.0) ** 2, 0.0))

    grads = jax.grad(value_loss)(params[VALUE_HEAD])
    assert np.abs(np.asarray(grads["kernel"])).max() > 0 and np.abs(np.asarray(grads["bias"])).max() > 0
    random = rl.add_value_head(CFG, policy, jax.random.key(2))  # as a reward model's score head starts
    assert (np.asarray(response_values(CFG, random, tokens, attention, out.mask))[np.asarray(out.mask)] != 0).all()
