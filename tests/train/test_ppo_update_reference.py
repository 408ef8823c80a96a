"""The PPO loss, its gradient and the compiled update against an independent reference written here
from the formulas (Schulman et al. 2016, 2017; Ziegler et al. 2019; Ouyang et al. 2022) with plain
jax.numpy and jax.grad: nothing from instructjax but the model forward.

The policy being trained differs from the one that sampled, so that some ratios fall outside
1 +- eps and some value changes outside +-c; each case checks that first."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax import models, rl, train
from instructjax.train import ppo_update
from instructjax.testing.prompts import common_token, left_padded
from instructjax.models.functional import init_params
from instructjax.rl.in_graph_rewards import token_count_reward

CFG = models.get_preset("tiny")
NEW_TOKENS = 8
KL_COEF = 0.1


# --- the reference ----------------------------------------------------------------------------


def masked_mean(x, mask):
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.sum(mask)


def whitened(x, mask, shift_mean=True):
    """(x - mean) * rsqrt(var + 1e-8) over valid tokens (population variance); shift_mean=False adds the mean back."""
    mean = masked_mean(x, mask)
    out = (x - mean) * jax.lax.rsqrt(masked_mean(jnp.square(x - mean), mask) + 1e-8)
    return jnp.where(mask, out if shift_mean else out + mean, 0.0)


KL_ESTIMATORS = {
    "k1": lambda logp, ref: logp - ref,
    "k2": lambda logp, ref: 0.5 * jnp.square(logp - ref),
    "k3": lambda logp, ref: jnp.exp(ref - logp) - 1.0 - (ref - logp),
}


def response_logprobs_and_values(policy, value, rollout, temperature):
    """The full-sequence forward; the output at index P + t - 1 predicts response token t."""
    tokens, attention_mask = rollout.tokens, rollout.attention_mask
    start = tokens.shape[1] - NEW_TOKENS - 1
    logits = models.Transformer(CFG).apply({"params": policy}, tokens, attention_mask=attention_mask)
    logits = logits[:, start:start + NEW_TOKENS]
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    logp = jnp.take_along_axis(logp, tokens[:, -NEW_TOKENS:, None], axis=-1)[..., 0]
    values = models.Transformer(CFG, head="scalar").apply({"params": value}, tokens, attention_mask=attention_mask)
    return logp, values[:, start:start + NEW_TOKENS]


def gae(rewards, values, mask, gamma, lam):
    """Reverse recursion over t; the value after the last valid token is 0."""
    advantages = []
    next_advantage = next_value = jnp.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = jnp.where(mask[:, t], delta + gamma * lam * next_advantage, 0.0)
        advantages.insert(0, advantage)
        next_advantage, next_value = advantage, jnp.where(mask[:, t], values[:, t], 0.0)
    advantages = jnp.stack(advantages, axis=1)
    return advantages, jnp.where(mask, advantages + values, 0.0)


def reference_targets(old_policy, old_value, rollout, config, kl_coef):
    """Old logprobs and values, advantages, returns, and the mean over episodes of the summed k1."""
    mask = rollout.response_mask
    old_logp, old_values = response_logprobs_and_values(old_policy, old_value, rollout, config.temperature)
    kl = jnp.where(mask, KL_ESTIMATORS[config.kl_kind](old_logp, rollout.ref_logprobs), 0.0)
    last = jnp.sum(mask, axis=1) - 1
    rewards = jnp.where(mask, -kl_coef * kl, 0.0).at[jnp.arange(mask.shape[0]), last].add(rollout.scores)
    if config.whiten_rewards:
        rewards = whitened(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, jnp.where(mask, old_values, 0.0), mask, config.gamma, config.lam)
    if config.whiten_advantages:
        advantages = whitened(advantages, mask)
    k1 = jnp.where(mask, old_logp - rollout.ref_logprobs, 0.0)
    return {"old_logp": old_logp, "old_values": old_values, "advantages": advantages, "returns": returns,
            "kl": jnp.mean(jnp.sum(k1, axis=1))}


def ptx_loss(policy, ptx):
    """-mean log pi(x) over the next-token targets of packed pretraining rows (same segment, loss_mask)."""
    logits = models.Transformer(CFG).apply({"params": policy}, ptx["tokens"], ptx["positions"], ptx["attention_mask"],
                                           segment_ids=ptx["segment_ids"])
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], axis=-1), ptx["tokens"][:, 1:, None], axis=-1)[..., 0]
    seg = ptx["segment_ids"]
    valid = ptx["loss_mask"][:, 1:] & (seg[:, 1:] == seg[:, :-1])
    return -jnp.sum(jnp.where(valid, logp, 0.0)) / jnp.sum(valid)


def reference_loss(params, rollout, targets, config, ptx=None):
    policy, value = params
    mask = rollout.response_mask
    logp, values = response_logprobs_and_values(policy, value, rollout, config.temperature)
    advantages, returns, old_values = targets["advantages"], targets["returns"], targets["old_values"]
    ratio = jnp.exp(logp - targets["old_logp"])
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = masked_mean(jnp.maximum(-advantages * ratio, -advantages * clipped_ratio), mask)
    clipped_values = old_values + jnp.clip(values - old_values, -config.value_clip, config.value_clip)
    value_loss = 0.5 * masked_mean(jnp.maximum(jnp.square(values - returns), jnp.square(clipped_values - returns)),
                                   mask)
    loss = policy_loss + config.vf_coef * value_loss
    if config.gamma_ptx > 0:
        loss = loss + config.gamma_ptx * ptx_loss(policy, ptx)
    return loss


def clipping_fractions(params, rollout, targets, config):
    """(policy tokens whose clipped term is the max, value tokens whose clipped term is the max)."""
    mask = rollout.response_mask
    logp, values = response_logprobs_and_values(*params, rollout, config.temperature)
    ratio = jnp.exp(logp - targets["old_logp"])
    unclipped = -targets["advantages"] * ratio
    clipped = -targets["advantages"] * jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    old, returns = targets["old_values"], targets["returns"]
    clipped_values = old + jnp.clip(values - old, -config.value_clip, config.value_clip)
    value_clipped = jnp.square(clipped_values - returns) > jnp.square(values - returns)
    return float(masked_mean(clipped > unclipped, mask)), float(masked_mean(value_clipped, mask))


# --- data -------------------------------------------------------------------------------------


def perturbed(params, key, scale):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def setup():
    """(sampling policy, its value model, rollout): prompts of 8 lengths (left-padded), responses
    of which some end early with EOS, a reference model near the policy, random scores."""
    policy = init_params(CFG, jax.random.key(0))
    value = init_params(CFG, jax.random.key(1), head="scalar")
    prompts, prompt_mask = (jnp.asarray(x) for x in left_padded((3, 9, 6, 2, 7, 5, 8, 4), CFG.vocab_size))

    def draw(eos_id):
        settings = rl.SamplingSettings(max_new_tokens=NEW_TOKENS, temperature=1.0, pad_id=0, eos_id=eos_id)
        return rl.sample_responses(CFG, policy, prompts, prompt_mask, rng=jax.random.key(2), settings=settings)

    out = draw(common_token(draw(None).tokens))
    reference = perturbed(policy, jax.random.key(3), 0.1)  # KL to the policy about 3 nats per episode
    rollout = jax.jit(rl.make_scorer(CFG, token_count_reward(7), temperature=1.0))(reference, None, out)
    scores = jax.random.normal(jax.random.key(4), rollout.scores.shape)
    rollout = rollout.replace(scores=scores, raw_scores=scores)
    lengths = np.asarray(rollout.response_mask).sum(1)
    assert np.sum(lengths < NEW_TOKENS) >= 2 and lengths.max() == NEW_TOKENS, lengths
    return policy, value, rollout


def ptx_rows(rows=4, length=12):
    """Packed pretraining rows: two segments each, the loss off on a few tokens."""
    rng = np.random.default_rng(5)
    segments = np.where(np.arange(length) < 5, 1, 2).repeat(rows).reshape(length, rows).T
    positions = np.where(segments == 1, np.arange(length), np.arange(length) - 5)
    loss_mask = np.ones((rows, length), bool)
    loss_mask[:, [2, 8]] = False
    return {"tokens": jnp.asarray(rng.integers(10, CFG.vocab_size, (rows, length)), jnp.int32),
            "positions": jnp.asarray(positions, jnp.int32), "segment_ids": jnp.asarray(segments, jnp.int32),
            "attention_mask": jnp.ones((rows, length), bool), "loss_mask": jnp.asarray(loss_mask)}


CONFIGS = {
    "k1_whiten_advantages": train.PPOConfig(kl_kind="k1"),
    "k2_whiten_rewards_only": train.PPOConfig(kl_kind="k2", whiten_rewards=True, whiten_advantages=False),
    "k3_whiten_both_ptx": train.PPOConfig(kl_kind="k3", whiten_rewards=True, gamma_ptx=2.0, gamma=0.9, lam=0.8),
    "k1_no_whitening_vf_coef": train.PPOConfig(whiten_advantages=False, vf_coef=0.5, clip_eps=0.1, value_clip=0.1),
}


def assert_trees_close(got, want, rtol):
    """Leaf by leaf, to `rtol` of the leaf's largest entry."""
    def close(g, w):
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * float(jnp.max(jnp.abs(w))))
    jax.tree.map(close, got, want)


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONFIGS)
def test_minibatch_loss_and_gradient_equal_the_reference(name):
    config = CONFIGS[name]
    old_policy, old_value, rollout = setup()
    params = (perturbed(old_policy, jax.random.key(10), 0.03), perturbed(old_value, jax.random.key(11), 0.05))
    ptx = ptx_rows() if config.gamma_ptx else None
    targets = reference_targets(old_policy, old_value, rollout, config, KL_COEF)
    policy_clipped, value_clipped = clipping_fractions(params, rollout, targets, config)
    assert 0.05 < policy_clipped < 0.95 and 0.05 < value_clipped < 0.95, (policy_clipped, value_clipped)

    want_loss, want_grads = jax.value_and_grad(reference_loss)(params, rollout, targets, config, ptx)

    _, old_logp, old_values = ppo_update.response_forward(CFG, CFG, config.temperature, (old_policy, old_value),
                                                         rollout)
    batch, _ = ppo_update.ppo_batch(rollout, old_logp, old_values, jnp.float32(KL_COEF), config)
    if ptx is not None:
        batch["ptx"] = ptx
    totals = ppo_update.loss_totals(batch, False, jnp.float32(KL_COEF), config)

    def library_loss(params):
        return ppo_update.minibatch_loss(CFG, CFG, config, params, batch, totals)[0]

    loss, grads = jax.value_and_grad(library_loss)(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_trees_close(grads, want_grads, rtol=1e-4)


@pytest.mark.parametrize("kl_kind", ["k1", "k2", "k3"])
def test_update_equals_two_reference_sgd_steps(kl_kind):
    """The compiled update, 2 epochs of one minibatch with SGD: epoch 1 at the sampling params (ratio 1),
    epoch 2 at the updated params against the same old logprobs (clipping active); rewards whitened;
    the adaptive controller moves beta by the mean summed k1 of the episodes, whatever the kl_kind."""
    old_policy, old_value, rollout = setup()
    lr, target, horizon = (0.05, 1.0), 3.0, 20.0  # SGD learning rates of the policy and the value model
    config = train.PPOConfig(ppo_epochs=2, num_minibatches=1, kl_kind=kl_kind, whiten_rewards=True, adaptive_kl=True,
                          kl_target=target, kl_horizon=horizon)
    policy_sgd, value_sgd = optax.sgd(lr[0]), optax.sgd(lr[1])
    state = train.init_ppo_state(old_policy, old_value, policy_sgd, value_sgd, KL_COEF)
    new_state, metrics, per_minibatch = jax.jit(train.make_ppo_update(CFG, CFG, policy_sgd, value_sgd, config))(
        state, rollout, None, jax.random.key(0))

    targets = reference_targets(old_policy, old_value, rollout, config, KL_COEF)

    def sgd_step(params):
        grads = jax.grad(reference_loss)(params, rollout, targets, config)
        return tuple(jax.tree.map(lambda p, g: p - rate * g, *pair) for rate, pair in zip(lr, zip(params, grads)))

    once = sgd_step((old_policy, old_value))
    twice = sgd_step(once)
    policy_clipped, value_clipped = clipping_fractions(once, rollout, targets, config)
    assert 0.05 < policy_clipped < 0.95 and 0.05 < value_clipped < 0.95, (policy_clipped, value_clipped)
    np.testing.assert_allclose(per_minibatch["clip_frac"][1, 0], policy_clipped, atol=1e-6)

    assert_trees_close((new_state.policy.params, new_state.value.params), twice, rtol=1e-4)
    kl = float(targets["kl"])
    assert abs(kl / target - 1.0) < 0.2  # the controller's error is not clipped
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(new_state.kl_coef, KL_COEF * (1.0 + (kl / target - 1.0) * rollout.tokens.shape[0] / horizon),
                               rtol=1e-5)


def reference_group_loss(policy, rollout, old_logp, config, kl_coef):
    """Group baselines (Shao et al. 2024; Liu et al. 2025; Ahmadian et al. 2024) on episode rewards
    (score - beta * summed KL unless the KL is a loss term), the clipped ratio objective on every
    token, + beta * mean k3 when `kl_in_loss`."""
    mask = rollout.response_mask
    logp, _ = response_logprobs_and_values(policy, policy_value_stub(), rollout, config.temperature)
    kl = jnp.where(mask, KL_ESTIMATORS[config.kl_kind](old_logp, rollout.ref_logprobs), 0.0)
    reward = rollout.scores - (0.0 if config.kl_in_loss else kl_coef * jnp.sum(kl, axis=1))
    groups = reward.reshape(-1, config.group_size)
    if config.advantage == "rloo":
        advantages = groups - (groups.sum(1, keepdims=True) - groups) / (config.group_size - 1)
    else:
        advantages = groups - groups.mean(1, keepdims=True)
        if config.advantage == "grpo":
            advantages = advantages / (jnp.std(groups, axis=1, ddof=1, keepdims=True) + 1e-6)
    advantages = advantages.reshape(-1)[:, None]
    ratio = jnp.exp(logp - old_logp)
    per_token = jnp.maximum(-advantages * ratio,
                            -advantages * jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps))
    if config.advantage == "drgrpo":
        loss = jnp.sum(jnp.where(mask, per_token, 0.0)) / mask.size
    else:
        loss = masked_mean(per_token, mask)
    if config.kl_in_loss:
        loss = loss + kl_coef * masked_mean(KL_ESTIMATORS[config.kl_kind](logp, rollout.ref_logprobs), mask)
    return loss


@functools.lru_cache(maxsize=None)
def policy_value_stub():
    return init_params(CFG, jax.random.key(1), head="scalar")


GROUP_CONFIGS = {
    "grpo_k3_loss": train.PPOConfig(advantage="grpo", group_size=4, kl_kind="k3", kl_in_loss=True),
    "drgrpo_k1_reward": train.PPOConfig(advantage="drgrpo", group_size=2, clip_eps=0.1),
    "rloo_k2_reward": train.PPOConfig(advantage="rloo", group_size=4, kl_kind="k2"),
    "rloo_k3_loss": train.PPOConfig(advantage="rloo", group_size=2, kl_kind="k3", kl_in_loss=True),
}


@pytest.mark.parametrize("name", GROUP_CONFIGS)
def test_group_baseline_loss_and_gradient_equal_the_reference(name):
    config = GROUP_CONFIGS[name]
    old_policy, _, rollout = setup()
    policy = perturbed(old_policy, jax.random.key(10), 0.03)
    old_logp, _ = response_logprobs_and_values(old_policy, policy_value_stub(), rollout, config.temperature)
    want_loss, want_grads = jax.value_and_grad(reference_group_loss)(policy, rollout, old_logp, config, KL_COEF)

    _, lib_old_logp, old_values = ppo_update.response_forward(CFG, None, config.temperature, (old_policy, None),
                                                             rollout, with_values=False)
    batch, _ = ppo_update.ppo_batch(rollout, lib_old_logp, old_values, jnp.float32(KL_COEF), config)
    totals = ppo_update.loss_totals(batch, False, jnp.float32(KL_COEF), config)

    def library_loss(policy):
        return ppo_update.minibatch_loss(CFG, None, config, (policy, None), batch, totals)[0]

    loss, grads = jax.value_and_grad(library_loss)(policy)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_trees_close(grads, want_grads, rtol=1e-4)
