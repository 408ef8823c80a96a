"""Per-token rewards (KL penalty plus the score at the last valid token) and the no-EOS penalty."""

import jax.numpy as jnp
import numpy as np

from instructjax import rl
from instructjax.rl.per_token_rewards import no_eos_penalty


def test_score_on_last_valid_token_and_nothing_after_eos():
    logp = jnp.array([[-1.0, -2.0, -0.5, -9.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = jnp.array([[-1.5, -1.0, -0.5, -0.1], [-2.0, -2.0, -2.0, -2.0]])
    mask = jnp.array([[True, True, True, False], [True, True, True, True]])
    rewards, kl = rl.token_rewards(jnp.array([2.0, -1.0]), logp, ref, mask, 0.1)
    np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(rewards, [[-0.05, 0.1, 2.0, 0.0], [-0.1, -0.1, -0.1, -1.1]], atol=1e-6)
    # beta * KL sums as expected: total reward = score - beta * sum(kl)
    np.testing.assert_allclose(rewards.sum(-1), [2.0 - 0.1 * -0.5, -1.0 - 0.1 * 4.0], atol=1e-6)


def test_kl_kinds_in_rewards():
    logp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-2.0, -1.0]])
    mask = jnp.ones((1, 2), bool)
    _, k2 = rl.token_rewards(jnp.zeros(1), logp, ref, mask, 1.0, "k2")
    np.testing.assert_allclose(k2, [[0.5, 0.5]])
    _, k3 = rl.token_rewards(jnp.zeros(1), logp, ref, mask, 1.0, "k3")
    np.testing.assert_allclose(k3, [[np.exp(-1) - 1 + 1, np.exp(1) - 1 - 1]], rtol=1e-6)


def test_empty_response_gets_no_reward():
    rewards, _ = rl.token_rewards(jnp.array([3.0]), jnp.zeros((1, 3)), jnp.zeros((1, 3)), jnp.zeros((1, 3), bool), 0.1)
    np.testing.assert_array_equal(rewards, 0.0)


def test_no_eos_penalty():
    np.testing.assert_allclose(no_eos_penalty(jnp.array([1.0, 1.0]), jnp.array([True, False])), [1.0, 0.0])
    np.testing.assert_allclose(no_eos_penalty(jnp.array([1.0]), jnp.array([False]), 3.0), [-2.0])
