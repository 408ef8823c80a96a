"""The SFT step: sharded over 8 fake devices equals one device; accumulation equals the full batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import parallel
from instructjax.losses import token_logprobs
from instructjax.models import Transformer, get_preset
from instructjax.models.functional import init_params
from instructjax.train import make_optimizer
from instructjax.train.optim import OptimConfig
from instructjax.train.sft import sft_loss_fn
from instructjax.train.state import init_state, state_shardings
from instructjax.train.step import compile_step, make_train_step

needs_8 = pytest.mark.needs_devices(8)
CFG = get_preset("tiny").replace(dropout_rate=0.1)
# Adam's first update is about lr * g / (|g| + eps), so float noise on gradient entries near eps
# moves a parameter by a fraction of lr: eps 1e-6 and params compared to 0.5% of lr.
OPTIM = OptimConfig(lr=1e-3, schedule="constant", weight_decay=0.1, clip_norm=1.0, eps=1e-6)
PARAM_ATOL = 5e-6


def random_batch(rows=16, length=24, seed=0):
    """Rows of two packed examples each, right-padded; loss on the second half of each example."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, CFG.vocab_size, (rows, length)).astype(np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    loss_mask = np.zeros((rows, length), bool)
    for r in range(rows):
        start = 0
        for seg, size in enumerate(rng.integers(4, length // 2, 2), 1):
            segment_ids[r, start:start + size] = seg
            positions[r, start:start + size] = np.arange(size)
            loss_mask[r, start + size // 2:start + size] = True
            start += size
    return {"tokens": tokens, "positions": positions, "segment_ids": segment_ids,
            "attention_mask": segment_ids > 0, "loss_mask": loss_mask}


def run_step(mesh, batch, num_microbatches=1, cfg=CFG):
    params = init_params(cfg, jax.random.key(0))
    tx = make_optimizer(OPTIM)
    shapes = jax.eval_shape(lambda: params)
    shardings = state_shardings(tx, shapes, parallel.param_shardings(cfg, shapes, mesh), mesh)
    state = init_state(params, tx, shardings)
    step = compile_step(make_train_step(sft_loss_fn(cfg), tx, num_microbatches=num_microbatches), shardings, mesh)
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    state, metrics = step(state, batch, jax.random.key(1))
    return jax.device_get(state.params), jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device():
    """(params, metrics) of one step on one device."""
    return run_step(parallel.make_mesh((1, 1, 1), jax.devices()[:1]), random_batch())


@needs_8
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (8, 1, 1)])
def test_sharded_step_equals_single_device(mesh_shape, single_device):
    ref_params, ref_metrics = single_device
    params, metrics = run_step(parallel.make_mesh(mesh_shape), random_batch())
    assert metrics["loss_tokens"] == ref_metrics["loss_tokens"]
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=PARAM_ATOL), params, ref_params)


def test_accumulating_four_microbatches_equals_the_full_batch():
    # Rows with very different numbers of loss tokens: a per-microbatch mean would be wrong.
    batch = random_batch(rows=8, seed=1)
    batch["loss_mask"][:2] = False
    batch["loss_mask"][2, 1:] = batch["attention_mask"][2, 1:]
    mesh = parallel.make_mesh((1, 1, 1), jax.devices()[:1])
    cfg = CFG.replace(dropout_rate=0.0)  # microbatches draw their own dropout masks
    ref_params, ref_metrics = run_step(mesh, batch, cfg=cfg)
    params, metrics = run_step(mesh, batch, num_microbatches=4, cfg=cfg)
    for key in ("tokens", "loss_tokens"):
        assert metrics[key] == ref_metrics[key]
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=PARAM_ATOL), params, ref_params)


def test_sft_loss_is_the_mean_cross_entropy_of_the_next_token_on_loss_mask_targets():
    batch = random_batch(rows=4, seed=2)
    cfg = CFG.replace(dropout_rate=0.0)
    params = init_params(cfg, jax.random.key(0))
    loss_sum, aux = sft_loss_fn(cfg)(params, batch, jax.random.key(1))
    logits = Transformer(cfg).apply({"params": params}, batch["tokens"], batch["positions"], batch["attention_mask"],
                                    segment_ids=batch["segment_ids"])
    nll, loss_mask = -token_logprobs(logits[:, :-1], batch["tokens"][:, 1:]), batch["loss_mask"][:, 1:]
    want = jnp.sum(jnp.where(loss_mask, nll, 0.0)) / jnp.sum(loss_mask)
    assert int(aux["weight"]) == batch["loss_mask"][:, 1:].sum()
    assert int(aux["totals"]["tokens"]) == batch["attention_mask"].sum()
    np.testing.assert_allclose(loss_sum / aux["weight"], want, rtol=1e-6)
