"""GAE and whitening (docs/formulas.md#gae, #whitening) against its check values and plain numpy loops."""

import jax.numpy as jnp
import numpy as np

from instructjax import rl, train
from instructjax.rl.advantages import masked_mean


def numpy_gae(rewards, values, mask, gamma, lam):
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        last = 0.0
        for t in reversed(range(rewards.shape[1])):
            if not mask[b, t]:
                continue
            next_value = values[b, t + 1] if t + 1 < rewards.shape[1] and mask[b, t + 1] else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last = delta + gamma * lam * (last if t + 1 < rewards.shape[1] and mask[b, t + 1] else 0.0)
            advantages[b, t] = last
    return advantages, np.where(mask, advantages + values, 0.0)


def test_gae_check_value():
    adv, ret = rl.gae(jnp.array([[-0.01, 0.01, -0.01, 2.0]]), jnp.array([[0.1, 0.2, 0.3, 0.4]]),
                      jnp.ones((1, 4), bool), gamma=1.0, lam=0.95)
    np.testing.assert_allclose(adv[0], [1.647525, 1.6395, 1.61, 1.6], atol=1e-6)
    np.testing.assert_allclose(ret[0], [1.747525, 1.8395, 1.91, 2.0], atol=1e-6)


def test_gae_matches_numpy_on_masked_random_inputs():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    lengths = rng.integers(1, 10, size=5)
    mask = np.arange(9)[None] < lengths[:, None]
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5)):
        adv, ret = rl.gae(jnp.array(rewards), jnp.array(values), jnp.array(mask), gamma, lam)
        ref_adv, ref_ret = numpy_gae(rewards, values, mask, gamma, lam)
        np.testing.assert_allclose(adv, ref_adv, atol=1e-5)
        np.testing.assert_allclose(ret, ref_ret, atol=1e-5)


def test_whiten_masked_population_statistics():
    x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    mask = jnp.array([[True, True, True, False]])
    out = rl.whiten(x, mask)
    expected = (np.array([1.0, 2.0, 3.0]) - 2.0) / np.sqrt(2.0 / 3.0 + 1e-8)
    np.testing.assert_allclose(out[0, :3], expected, rtol=1e-6)
    assert float(out[0, 3]) == 0.0
    kept = rl.whiten(x, mask, shift_mean=False)
    np.testing.assert_allclose(kept[0, :3], expected + 2.0, rtol=1e-6)
    np.testing.assert_allclose(masked_mean(kept, mask), 2.0, rtol=1e-6)


def test_group_advantages_check_values():
    r = jnp.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(rl.group_advantages(r, 4), [0.866024, -0.866024, -0.866024, 0.866024], atol=1e-6)
    np.testing.assert_allclose(rl.group_advantages(r, 4, scale=False), [0.5, -0.5, -0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(rl.rloo_advantages(r, 4), [0.666667, -0.666667, -0.666667, 0.666667], atol=1e-6)


def test_group_advantages_per_group_against_numpy():
    rng = np.random.default_rng(1)
    r = rng.normal(size=12)
    got, got_rloo = rl.group_advantages(jnp.array(r), 3), rl.rloo_advantages(jnp.array(r), 3)
    for g in range(4):
        x = r[3 * g:3 * g + 3]
        np.testing.assert_allclose(got[3 * g:3 * g + 3], (x - x.mean()) / (x.std(ddof=1) + 1e-6), rtol=1e-5)
        loo = np.array([x[i] - np.delete(x, i).mean() for i in range(3)])
        np.testing.assert_allclose(got_rloo[3 * g:3 * g + 3], loo, rtol=1e-5, atol=1e-6)


def test_group_of_equal_rewards_gives_zeros_not_nan():
    r = jnp.array([2.0, 2.0, 2.0, 0.0, 1.0, 0.5])
    for adv in (rl.group_advantages(r, 3), rl.group_advantages(r, 3, scale=False), rl.rloo_advantages(r, 3)):
        assert np.all(np.isfinite(adv)) and np.all(np.asarray(adv[:3]) == 0.0)


def test_group_advantages_reject_ragged_groups():
    import pytest
    with pytest.raises(ValueError, match="group_size=4"):
        rl.group_advantages(jnp.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size=1"):
        rl.rloo_advantages(jnp.zeros(6), 1)


def test_ppo_config_rejects_a_group_baseline_without_groups():
    import pytest
    with pytest.raises(ValueError, match="group_size >= 2"):
        train.PPOConfig(advantage="rloo", group_size=1)
    with pytest.raises(ValueError, match="expected one of"):
        train.PPOConfig(advantage="reinforce")
