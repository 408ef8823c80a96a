"""Frozen models kept in bf16 (reference and reward): params cast once, scores and reference
logprobs close to the float32 ones."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

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
