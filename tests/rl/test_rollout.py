"""Frozen models kept in bf16 (reference and reward): params cast once, scores and reference
logprobs close to the float32 ones. The reward as the weighted sum of its sources."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import models, rl
from instructjax.rewards.scoring import reward_params_from_lm

CFG = models.get_preset("tiny")


@functools.lru_cache(maxsize=None)
def sample():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(10, 200, size=(8, 6)), jnp.int32)
    policy = models.init_params(CFG, jax.random.key(0))
    settings = rl.SamplingSettings(max_new_tokens=8, eos_id=3, pad_id=0)
    out = rl.sample_responses(CFG, policy, tokens, jnp.ones(tokens.shape, bool), rng=jax.random.key(1),
                              settings=settings)
    return policy, reward_params_from_lm(CFG, policy, jax.random.key(2)), out


def test_frozen_model_casts_params_once_and_keeps_the_scalar_head_float32():
    policy, reward, _ = sample()
    cfg, params = rl.frozen_model(CFG, reward, "bfloat16")
    assert cfg.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(rl.lm_params(params)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params[rl.VALUE_HEAD]))
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
    count = rl.token_count_reward(42)
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
