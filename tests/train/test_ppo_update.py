"""The compiled PPO update: only the first minibatch reuses the recompute, microbatch accumulation,
PPO-ptx gradients, sharded equals single-device (GAE and GRPO), and learning on a synthetic reward,
with a separate value network and with a value head on the policy trunk."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax import models, parallel, rl, train
from instructjax.train import ppo_update
from instructjax.train.state import state_shardings
from instructjax.models.functional import init_params
from instructjax.rl.forwards import response_values
from instructjax.rl.in_graph_rewards import token_count_reward
from instructjax.rl.value_head import VALUE_HEAD
from instructjax.train.ppo_update import ptx_logprob_sum

CFG = models.get_preset("tiny")
TARGET = 7  # the synthetic reward counts this token


def prompts(rows=16, length=6, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 200, size=(rows, length)).astype(np.int32)
    mask = np.ones((rows, length), bool)
    mask[::2, :2] = False  # left padding on half of the rows
    tokens[~mask] = 0
    return jnp.asarray(tokens), jnp.asarray(mask)


@functools.lru_cache(maxsize=None)
def models_params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return init_params(CFG, k1), init_params(CFG, k2, head="scalar")


@functools.lru_cache(maxsize=None)
def shared_params(seed=0):
    """The policy of `models_params` with a value head on its trunk."""
    return rl.add_value_head(CFG, models_params(seed)[0], jax.random.key(seed + 7))


def rollout_batch(policy, rows=16, new=8, seed=0, eos_id=3):
    tokens, mask = prompts(rows, seed=seed)
    settings = rl.SamplingSettings(max_new_tokens=new, temperature=1.0, eos_id=eos_id, pad_id=0)
    out = rl.sample_responses(CFG, policy, tokens, mask, rng=jax.random.key(seed + 100), settings=settings)
    score = jax.jit(rl.make_scorer(CFG, token_count_reward(TARGET), temperature=1.0))
    return score(policy, None, out)


def make(config, policy_tx=None, value_tx=None, kl_coef=0.05, shared=False):
    """(initial state, jitted update); `shared`: the value head on the policy trunk, no value network."""
    policy, value = models_params()
    policy_tx = policy_tx or optax.adam(1e-3)
    if shared:
        state = train.init_ppo_state(shared_params(), None, policy_tx, None, kl_coef)
        return state, jax.jit(train.make_ppo_update(CFG, None, policy_tx, None, config))
    value_tx = value_tx or optax.adam(1e-3)
    state = train.init_ppo_state(policy, value, policy_tx, value_tx, kl_coef)
    return state, jax.jit(train.make_ppo_update(CFG, CFG, policy_tx, value_tx, config))


def test_each_epoch_cuts_a_fresh_permutation_of_the_episodes_into_minibatches():
    """The minibatches of an epoch cover every episode once, in a random order that changes with the epoch's key."""
    orders = [np.asarray(ppo_update.minibatch_indices(key, 16, 4)) for key in jax.random.split(jax.random.key(1), 2)]
    for order in orders:
        assert order.shape == (4, 4) and sorted(order.ravel().tolist()) == list(range(16))
    assert not np.array_equal(orders[0].ravel(), np.arange(16)) and not np.array_equal(orders[0], orders[1])


@pytest.mark.parametrize("shared", [False, True], ids=["separate_value", "shared_trunk"])
def test_only_the_first_minibatch_reuses_the_recompute(shared):
    """2 epochs x 4 minibatches. The first minibatch of the first epoch takes its old logprobs and
    values from its own forward, so its ratio is exactly 1 by construction; what can fail here is
    which minibatch gets that: exactly the first, every later one sees the updated policy. (Whether
    the recompute equals the sampler's logprobs is test_rollout's test; the loss is checked
    against a reference in test_update_reference.)"""
    state, update = make(train.PPOConfig(ppo_epochs=2, num_minibatches=4), shared=shared)
    batch = rollout_batch(state.policy.params)
    new_state, metrics, per_mb = update(state, batch, None, jax.random.key(1))
    assert per_mb["ratio"].shape == (2, 4)
    assert float(per_mb["ratio"][0, 0]) == 1.0
    assert float(per_mb["approx_kl"][0, 0]) == 0.0
    assert float(per_mb["clip_frac"][0, 0]) == 0.0
    assert (np.asarray(per_mb["approx_kl"]).ravel()[1:] > 0.0).all()
    assert int(new_state.step) == 1 and int(new_state.policy.step) == 8
    assert (new_state.value is None) == shared
    if shared:  # the value loss trained the value head through the policy optimizer
        head = VALUE_HEAD
        assert not np.allclose(new_state.policy.params[head]["kernel"], state.policy.params[head]["kernel"])
    for key in ("score", "kl", "kl_coef", "entropy", "approx_kl", "clip_frac", "value_loss", "explained_variance",
                "response_length", "eos_fraction", "pg_loss", "loss"):
        assert np.isfinite(float(metrics[key])), key


def test_microbatch_accumulation_matches_full_minibatch():
    tx = optax.sgd(0.1)
    batch = rollout_batch(models_params()[0])
    results = []
    for micro in (1, 2):
        state, update = make(train.PPOConfig(num_minibatches=2, microbatches=micro), tx, tx)
        new_state, metrics, _ = update(state, batch, None, jax.random.key(1))
        results.append((new_state, metrics))
    a, b = results
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-6), a[0].policy.params, b[0].policy.params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-6), a[0].value.params, b[0].value.params)
    np.testing.assert_allclose(a[1]["pg_loss"], b[1]["pg_loss"], atol=1e-6)


def ptx_batch(rows=4, length=12, seed=3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 200, size=(rows, length)).astype(np.int32)
    segments = np.ones((rows, length), np.int32)
    segments[:, length // 2:] = 2
    positions = np.concatenate([np.arange(length // 2), np.arange(length - length // 2)]).astype(np.int32)
    return {"tokens": jnp.asarray(tokens), "positions": jnp.asarray(np.broadcast_to(positions, (rows, length))),
            "segment_ids": jnp.asarray(segments), "attention_mask": jnp.ones((rows, length), bool),
            "loss_mask": jnp.ones((rows, length), bool)}


SGD = optax.sgd(1.0)


@functools.lru_cache(maxsize=None)
def sgd_update(gamma_ptx):
    """(state after one single-minibatch update with SGD lr 1, metrics) for this gamma_ptx."""
    state, update = make(train.PPOConfig(num_minibatches=1, gamma_ptx=gamma_ptx or 0.0), SGD, SGD)
    batch = rollout_batch(models_params()[0])
    return update(state, batch, None if gamma_ptx is None else ptx_batch(), jax.random.key(1))[:2]


def test_ptx_zero_equals_plain_ppo():
    plain, _ = sgd_update(None)
    zero, _ = sgd_update(0.0)
    jax.tree.map(np.testing.assert_array_equal, plain.policy.params, zero.policy.params)


def test_ptx_gradient_is_added_to_the_ppo_gradient():
    """One minibatch, SGD lr 1: params move by -(grad PPO + gamma * grad(-mean log pi(x)))."""
    gamma = 2.5
    plain, _ = sgd_update(None)
    ptx, metrics = sgd_update(gamma)
    pretrain, params = ptx_batch(), models_params()[0]
    count = jnp.sum(ppo_update.ptx_targets(pretrain)[1])

    def ptx_loss(p):
        return -ptx_logprob_sum(CFG, p, pretrain) / count

    manual = jax.grad(ptx_loss)(params)
    np.testing.assert_allclose(metrics["ptx_loss"], ptx_loss(params), rtol=1e-5)
    jax.tree.map(lambda x, y, g: np.testing.assert_allclose(y - x, -gamma * g, atol=2e-5),
                 plain.policy.params, ptx.policy.params, manual)


def run_ppo(kl_coef, iterations, seed=0, shared=False):
    """Sample -> score -> update for `iterations` rollout batches; returns per-iteration metrics."""
    tx = optax.adam(3e-3)
    config = train.PPOConfig(num_minibatches=2, ppo_epochs=2, vf_coef=0.1 if shared else 1.0)
    state, update = make(config, tx, optax.adam(3e-3), kl_coef=kl_coef, shared=shared)
    settings = rl.SamplingSettings(max_new_tokens=8, temperature=1.0, eos_id=None, pad_id=0)
    score = jax.jit(rl.make_scorer(CFG, token_count_reward(TARGET), temperature=1.0, no_eos_penalty_value=None))
    ref = models_params()[0]
    tokens, mask = prompts(32, seed=seed)
    history = []
    for i in range(iterations):
        out = rl.sample_responses(CFG, state.policy.params, tokens, mask, rng=jax.random.key(1000 + i),
                                  settings=settings)
        batch = score(ref, None, out)
        state, metrics, _ = update(state, batch, None, jax.random.key(i))
        history.append({k: float(v) for k, v in metrics.items()})
    return history


def assert_learns(history):
    first = np.mean([h["score"] for h in history[:3]])
    last = np.mean([h["score"] for h in history[-3:]])
    assert last > first + 1.0, (first, last)


def test_learning_on_a_synthetic_reward():
    history = run_ppo(kl_coef=0.01, iterations=25)
    assert_learns(history)
    assert all(np.isfinite(h["kl"]) for h in history)
    strong = run_ppo(kl_coef=2.0, iterations=25)
    assert abs(strong[-1]["kl"]) < 0.5 * history[-1]["kl"], (strong[-1]["kl"], history[-1]["kl"])


GRPO = {"advantage": "grpo", "group_size": 4, "kl_in_loss": True, "kl_kind": "k3"}  # no value function


def test_one_step_with_the_kl_in_the_loss_runs_no_recompute_and_takes_the_same_step(monkeypatch):
    """GRPO with one epoch of one minibatch (2 microbatches) and the KL in the loss: nothing before the
    only optimizer step reads old logprobs, so the update runs no recompute forward. Its params, losses,
    KL and entropy (from the step's own forward) and the adaptive controller's next beta equal those of
    the same update with the recompute; the reference is another model, so the KL is not 0."""
    policy, reference = models_params(0)[0], models_params(1)[0]
    tokens, mask = prompts(16)
    settings = rl.SamplingSettings(max_new_tokens=8, temperature=1.0, eos_id=3, pad_id=0)
    out = rl.sample_responses(CFG, policy, tokens, mask, rng=jax.random.key(100), settings=settings)
    batch = jax.jit(rl.make_scorer(CFG, token_count_reward(TARGET), temperature=1.0))(reference, None, out)
    batch = dataclasses.replace(batch, scores=jnp.asarray(np.random.default_rng(0).normal(size=16), jnp.float32))
    config = train.PPOConfig(num_minibatches=1, microbatches=2, adaptive_kl=True, kl_target=1.0, kl_horizon=100.0,
                             **GRPO)
    assert not config.recomputes_old
    assert train.PPOConfig(num_minibatches=1, microbatches=2, **GRPO | {"kl_in_loss": False}).recomputes_old

    def run():
        state = train.init_ppo_state(policy, None, SGD, None, 0.05)
        return jax.jit(train.make_ppo_update(CFG, None, SGD, None, config))(state, batch, None, jax.random.key(1))

    def recompute(*args, **kwargs):
        raise AssertionError("old logprobs recomputed")

    with monkeypatch.context() as patch:
        patch.setattr(ppo_update, "recompute_old", recompute)
        got, got_metrics, _ = run()
    monkeypatch.setattr(train.PPOConfig, "recomputes_old", property(lambda self: True))
    want, want_metrics, _ = run()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got.policy.params, want.policy.params)
    assert float(want_metrics["kl"]) > 0.1
    for key in ("kl", "entropy", "pg_loss", "kl_loss", "loss", "kl_coef"):
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(got.kl_coef, want.kl_coef, rtol=1e-6)
    assert float(got.kl_coef) != 0.05


@pytest.mark.needs_devices(8)
@pytest.mark.parametrize("settings", [{}, GRPO], ids=["gae", "grpo"])
def test_sharded_update_equals_single_device(settings):
    grpo = bool(settings)
    policy, value = models_params()
    value = None if grpo else value
    tx = optax.adam(1e-3)
    config = train.PPOConfig(num_minibatches=2, ppo_epochs=2, **settings)
    update = train.make_ppo_update(CFG, None if grpo else CFG, tx, None if grpo else tx, config)
    batch = rollout_batch(policy)
    if grpo:  # scores that differ within every group: no group's advantages are all 0
        batch = dataclasses.replace(batch, scores=jnp.asarray(np.random.default_rng(0).normal(size=16), jnp.float32))
    state = train.init_ppo_state(policy, value, tx, None if grpo else tx, 0.05)
    want, want_metrics, _ = jax.jit(update)(state, batch, None, jax.random.key(1))

    mesh = parallel.make_mesh((2, 4, 1))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), policy)
    vshapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), value)
    replicated = parallel.replicated(mesh)
    shardings = train.PPOState(
        step=replicated, kl_coef=replicated,
        policy=state_shardings(tx, shapes, parallel.param_shardings(CFG, shapes, mesh), mesh),
        value=None if grpo else state_shardings(
            tx, vshapes, parallel.param_shardings(CFG, vshapes, mesh, head="scalar"), mesh))
    rows = jax.tree.map(lambda x: parallel.batch_sharding(mesh, x.ndim), batch)
    with parallel.activation_sharding(mesh):
        sharded = jax.jit(update, in_shardings=(shardings, rows, None, replicated),
                          out_shardings=(shardings, replicated, replicated))
        got, got_metrics, _ = sharded(jax.device_put(state, shardings), jax.device_put(batch, rows), None,
                                      jax.device_put(jax.random.key(1), replicated))
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(got.policy.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), jax.device_get(got.policy.params),
                 jax.device_get(want.policy.params))
    if not grpo:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), jax.device_get(got.value.params),
                     jax.device_get(want.value.params))
    for key in ("score", "kl", "pg_loss", "approx_kl", "kl_loss" if grpo else "value_loss"):
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-3, atol=1e-5)


def test_shared_value_head_learns_on_a_synthetic_reward():
    history = run_ppo(kl_coef=0.01, iterations=25, shared=True)
    assert_learns(history)
    assert history[-1]["explained_variance"] > history[0]["explained_variance"]


def test_shared_forward_reads_both_heads_from_one_trunk():
    params = shared_params()
    batch = rollout_batch(models_params()[0])
    logits, values = rl.response_logits_and_values(CFG, params, batch.tokens, batch.attention_mask,
                                                   batch.response_mask)
    num_new = batch.response_mask.shape[1]
    want_logits = rl.forwards.response_logits(CFG, rl.lm_params(params), batch.tokens, batch.attention_mask, num_new)
    want_values = response_values(CFG, params, batch.tokens, batch.attention_mask, batch.response_mask)
    np.testing.assert_array_equal(logits, want_logits)
    np.testing.assert_allclose(values, want_values, atol=1e-5)
