"""Learning-rate schedules, the weight-decay mask and clipping."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax.train.optim import OptimConfig, decay_mask, learning_rate_schedule, make_optimizer


def test_cosine_decays_to_ten_percent_without_warmup():
    schedule = learning_rate_schedule(OptimConfig(lr=9.65e-6, schedule="cosine", total_steps=100))
    assert float(schedule(0)) == pytest.approx(9.65e-6)
    assert float(schedule(50)) == pytest.approx(9.65e-6 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(schedule(100)) == pytest.approx(9.65e-7, rel=1e-5)


def test_warmup_then_linear():
    schedule = learning_rate_schedule(OptimConfig(lr=1.0, schedule="linear", warmup_steps=10, total_steps=110,
                                                  final_lr_fraction=0.0))
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(60)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="optim.schedule"):
        learning_rate_schedule(OptimConfig(schedule="exp"))


def test_decay_skips_norms_and_biases_and_clipping_applies():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "norm": {"scale": jnp.ones((2,))}}
    assert decay_mask(params) == {"kernel": True, "bias": False, "norm": {"scale": False}}
    opt = make_optimizer(OptimConfig(lr=0.1, schedule="constant", weight_decay=0.5, clip_norm=0.0))
    zero = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,)), "norm": {"scale": jnp.zeros((2,))}}
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["bias"], 0.0)
    # With a large eps, Adam's first step is about lr * g: the clipped gradient's norm shows through.
    clipped = make_optimizer(OptimConfig(lr=1.0, schedule="constant", clip_norm=1e-3, eps=1.0))
    grads = {"kernel": jnp.full((2, 2), 10.0), "bias": jnp.zeros((2,)), "norm": {"scale": jnp.zeros((2,))}}
    updates, _ = clipped.update(grads, clipped.init(params), params)
    assert float(optax.global_norm(updates)) == pytest.approx(1e-3, rel=1e-2)
