"""KL estimators (Schulman's k1, k2, k3) and the KL coefficient controllers (Ziegler et al. 2019)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import rl, train


def test_kl_estimators():
    lp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
    r = np.array([-1.5 + 1.0, -1.0 + 2.0])  # log(p_ref / p)
    np.testing.assert_allclose(rl.kl_penalty(lp, ref, "k1"), [0.5, -1.0])
    np.testing.assert_allclose(rl.kl_penalty(lp, ref, "k2"), [0.125, 0.5])
    np.testing.assert_allclose(rl.kl_penalty(lp, ref, "k3"), np.exp(r) - 1 - r, rtol=1e-6)
    with pytest.raises(ValueError, match="k4"):
        rl.kl_penalty(lp, ref, "k4")


def test_adaptive_controller_check_value():
    ctl = rl.AdaptiveKLController(init_kl_coef=0.15, target=6.0, horizon=10000)
    assert ctl.update(9.0, 512) == pytest.approx(0.151536, abs=1e-7)
    assert ctl.value == pytest.approx(0.151536, abs=1e-7)
    ctl = rl.AdaptiveKLController(0.15, 6.0, 10000)
    ctl.update(0.0, 512)  # error clipped at -0.2
    assert ctl.value == pytest.approx(0.15 * (1 - 0.2 * 512 / 10000))
    ctl = rl.AdaptiveKLController(0.15, 6.0, 10000)
    assert float(ctl.next_coef(60.0, 512)) == pytest.approx(0.15 * (1 + 0.2 * 512 / 10000))  # clipped at +0.2
    assert ctl.value == 0.15  # next_coef leaves the controller as it is


def test_adaptive_controller_runs_inside_jit():
    """What the PPO update does with its coefficient (a traced float32 array)."""
    @jax.jit
    def step(kl_coef, kl):
        return rl.AdaptiveKLController(kl_coef, target=6.0, horizon=10000.0).next_coef(kl, 512)

    coef = step(jnp.float32(0.15), jnp.float32(9.0))
    assert coef.dtype == jnp.float32
    np.testing.assert_allclose(coef, 0.151536, rtol=1e-6)


def test_fixed_controller():
    ctl = rl.FixedKLController(0.02)
    assert ctl.update(100.0, 512) == 0.02 and ctl.value == 0.02
    assert ctl.next_coef(100.0, 512) == 0.02


def test_ppo_config_names_its_controller():
    assert train.PPOConfig().kl_controller(0.02) == rl.FixedKLController(0.02)
    config = train.PPOConfig(adaptive_kl=True, kl_target=3.0, kl_horizon=500.0)
    assert config.kl_controller(0.1) == rl.AdaptiveKLController(0.1, target=3.0, horizon=500.0)
