"""PPO policy / value losses and diagnostics (docs/formulas.md#ppo-policy-loss, #ppo-value-loss,
#ppo-diagnostics) against hand-computed values and numpy loops."""

import jax.numpy as jnp
import numpy as np

from instructjax.rl.ppo_losses import explained_variance, policy_loss, value_loss


def numpy_policy_loss(logp, old, adv, mask, eps):
    terms, clipped = [], []
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[b, t]:
                ratio = np.exp(logp[b, t] - old[b, t])
                a = -adv[b, t] * ratio
                c = -adv[b, t] * min(max(ratio, 1 - eps), 1 + eps)
                terms.append(max(a, c))
                clipped.append(c > a)
    return np.mean(terms), np.mean(clipped)


def numpy_value_loss(v, old, ret, mask, c):
    terms = []
    for b in range(v.shape[0]):
        for t in range(v.shape[1]):
            if mask[b, t]:
                vc = old[b, t] + min(max(v[b, t] - old[b, t], -c), c)
                terms.append(max((v[b, t] - ret[b, t]) ** 2, (vc - ret[b, t]) ** 2))
    return 0.5 * np.mean(terms)


def test_policy_loss_hand_computed():
    # ratios exp(0.5)=1.6487 (clipped to 1.2 for A>0: max(-1.6487, -1.2) = -1.2), exp(-0.5)=0.6065 (A<0:
    # max(0.6065, 0.8) = 0.8); mean = (-1.2 + 0.8) / 2 = -0.2; both clipped.
    logp, old = jnp.array([[0.0, -1.0]]), jnp.array([[-0.5, -0.5]])
    adv = jnp.array([[1.0, -1.0]])
    loss, stats = policy_loss(logp, old, adv, jnp.ones((1, 2), bool), 0.2)
    np.testing.assert_allclose(loss, -0.2, atol=1e-6)
    np.testing.assert_allclose(stats["clip_frac"], 1.0)
    np.testing.assert_allclose(stats["approx_kl"], 0.125, atol=1e-6)


def test_value_loss_hand_computed():
    # V_old 0, V_new 1, R 1: V_clip 0.2 -> max(0, 0.64) = 0.64; V_new 0.1, R -1: V_clip 0.1 -> 1.21;
    # 0.5 * mean(0.64, 1.21) = 0.4625
    loss, _ = value_loss(jnp.array([[1.0, 0.1]]), jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]]),
                         jnp.ones((1, 2), bool), 0.2)
    np.testing.assert_allclose(loss, 0.4625, atol=1e-6)


def test_losses_match_numpy_on_masked_random_inputs():
    rng = np.random.default_rng(0)
    shape = (4, 7)
    logp, old, adv, v, vold, ret = (rng.normal(size=shape).astype(np.float32) * s
                                    for s in (0.3, 0.3, 1.0, 1.0, 1.0, 1.0))
    mask = rng.random(shape) > 0.3
    loss, stats = policy_loss(logp, old, adv, mask, 0.2)
    want, clip = numpy_policy_loss(logp, old, adv, mask, 0.2)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(stats["clip_frac"], clip, rtol=1e-5)
    np.testing.assert_allclose(value_loss(v, vold, ret, mask, 0.2)[0], numpy_value_loss(v, vold, ret, mask, 0.2),
                               rtol=1e-5)


def test_ratio_one_gives_zero_kl_and_no_clipping():
    logp = jnp.array([[-1.0, -2.0, -3.0]])
    loss, stats = policy_loss(logp, logp, jnp.array([[1.0, -2.0, 0.5]]), jnp.ones((1, 3), bool))
    assert float(stats["ratio"]) == 1.0 and float(stats["approx_kl"]) == 0.0 and float(stats["clip_frac"]) == 0.0
    np.testing.assert_allclose(loss, -(1.0 - 2.0 + 0.5) / 3, atol=1e-6)


def test_explained_variance():
    ret = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    mask = jnp.array([[True, True, True, False]])
    np.testing.assert_allclose(explained_variance(ret, ret, mask), 1.0)
    np.testing.assert_allclose(explained_variance(jnp.zeros_like(ret) + 2.0, ret, mask), 0.0, atol=1e-6)
