"""KL estimators and controllers against RLHF.md items 14 and 16."""

import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import rl


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


def test_fixed_controller():
    ctl = rl.FixedKLController(0.02)
    assert ctl.update(100.0, 512) == 0.02 and ctl.value == 0.02
