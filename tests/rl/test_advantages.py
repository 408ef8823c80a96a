"""GAE and whitening (docs/formulas.md#gae, #whitening) against its check values and plain numpy loops."""

import jax.numpy as jnp
import numpy as np

from instructjax import rl


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
    np.testing.assert_allclose(rl.masked_mean(kept, mask), 2.0, rtol=1e-6)
