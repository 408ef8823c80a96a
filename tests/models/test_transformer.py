"""Transformer invariances: padding, KV cache, scan/remat, dtypes, packing, logical axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import instructjax as ij
from instructjax.models import Transformer, get_preset
from instructjax.models.functional import init_params
from instructjax.models.transformer import init_cache
from instructjax.models.functional import stack_layers, unstack_layers
from instructjax.testing.models import TINY_MODELS, random_tokens


def test_padding_does_not_change_real_logits(model):
    cfg, params = model
    seq = random_tokens((1, 6))
    ref = Transformer(cfg).apply({"params": params}, seq)[0]
    pad = jnp.full((1, 3), 7, jnp.int32)
    left = jnp.concatenate([pad, seq], axis=1)
    right = jnp.concatenate([seq, pad], axis=1)
    left_mask = jnp.arange(9)[None] >= 3
    right_mask = jnp.arange(9)[None] < 6
    out_left = Transformer(cfg).apply({"params": params}, left, attention_mask=left_mask)[0, 3:]
    out_right = Transformer(cfg).apply({"params": params}, right, attention_mask=right_mask)[0, :6]
    np.testing.assert_allclose(out_left, ref, atol=1e-5)
    np.testing.assert_allclose(out_right, ref, atol=1e-5)
    assert np.isfinite(np.asarray(Transformer(cfg).apply({"params": params}, left, attention_mask=left_mask))).all()


def test_cache_decode_equals_full_forward(model):
    cfg, params = model
    seq = random_tokens((2, 8), seed=1)
    mask = jnp.array([[True] * 8, [False, False] + [True] * 6])
    full = Transformer(cfg).apply({"params": params}, seq, attention_mask=mask)
    cache = init_cache(cfg, batch=2, max_len=10)
    model = Transformer(cfg)
    logits, cache = model.apply({"params": params}, seq[:, :5], attention_mask=mask[:, :5], cache=cache)
    np.testing.assert_allclose(logits[0], full[0, :5], atol=1e-5)
    np.testing.assert_allclose(logits[1, 2:], full[1, 2:5], atol=1e-5)
    for t in range(5, 8):
        step_logits, cache = model.apply({"params": params}, seq[:, t:t + 1], cache=cache)
        np.testing.assert_allclose(step_logits[:, 0], full[:, t], atol=1e-5)
    assert int(cache.index) == 8
    np.testing.assert_array_equal(cache.next_position, [8, 6])


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_and_remat_give_same_logits_and_grads(remat):
    cfg = get_preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    seq = random_tokens((2, 5))
    scanned_cfg = cfg.replace(scan_layers=True, remat_policy=remat)
    scanned = stack_layers(params)

    def loss(c, p):
        return jnp.mean(Transformer(c).apply({"params": p}, seq) ** 2)

    np.testing.assert_allclose(loss(scanned_cfg, scanned), loss(cfg, params), rtol=1e-6)
    grads = unstack_layers(jax.grad(lambda p: loss(scanned_cfg, p))(scanned))
    ref = jax.grad(lambda p: loss(cfg, p))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, ref)
    assert jax.tree.structure(unstack_layers(scanned)) == jax.tree.structure(params)


def test_bf16_compute_with_f32_params_gives_f32_logits():
    cfg = get_preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    seq = random_tokens((2, 5))
    ref = Transformer(cfg).apply({"params": params}, seq)
    out = Transformer(cfg.replace(dtype="bfloat16")).apply({"params": params}, seq)
    assert out.dtype == jnp.float32
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.05)
    assert float(jnp.abs(out - ref).max()) > 0  # really computed in bf16


def test_segment_ids_isolate_packed_examples():
    cfg = get_preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    a, b = random_tokens((1, 4), seed=2), random_tokens((1, 3), seed=3)
    packed = jnp.concatenate([a, b], axis=1)
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2]])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2]])
    out = Transformer(cfg).apply({"params": params}, packed, positions=positions, segment_ids=segments)
    np.testing.assert_allclose(out[0, 4:], Transformer(cfg).apply({"params": params}, b)[0], atol=1e-5)
    np.testing.assert_allclose(out[0, :4], Transformer(cfg).apply({"params": params}, a)[0], atol=1e-5)


def test_every_param_has_logical_axes():
    for cfg in TINY_MODELS.values():
        for head in ("lm", "scalar"):
            axes = ij.models.param_logical_axes(cfg, head)
            params = init_params(cfg, jax.random.key(0), head)
            flat_axes = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(
                x, jax.sharding.PartitionSpec))
            shapes = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
            assert len(flat_axes) == len(shapes)
            for path, spec in flat_axes:
                assert len(spec) == len(shapes[jax.tree_util.keystr(path)]), path


def test_scalar_head_reads_final_hidden_state():
    cfg = get_preset("tiny")
    params = init_params(cfg, jax.random.key(0), head="scalar")
    seq = random_tokens((2, 5))
    scores, hidden = Transformer(cfg, head="scalar").apply({"params": params}, seq, return_hidden=True)
    head = params["score_head"]
    np.testing.assert_allclose(scores, hidden @ head["kernel"][:, 0] + head["bias"][0], atol=1e-5)
    assert scores.shape == (2, 5) and scores.dtype == jnp.float32
    std = float(np.std(head["kernel"]))
    assert abs(std - (cfg.d_model + 1) ** -0.5) < 0.04 and float(head["bias"][0]) == 0.0


def test_dropout_only_when_not_deterministic():
    cfg = get_preset("tiny").replace(dropout_rate=0.5)
    params = init_params(cfg, jax.random.key(0))
    seq = random_tokens((1, 5))
    model = Transformer(cfg)
    eval_a = model.apply({"params": params}, seq)
    eval_b = model.apply({"params": params}, seq, deterministic=True)
    train = model.apply({"params": params}, seq, deterministic=False, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(eval_a, eval_b)
    assert float(jnp.abs(train - eval_a).max()) > 1e-3


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="arch"):
        get_preset("tiny", arch="bert")
    with pytest.raises(KeyError, match="unknown model preset"):
        get_preset("nope")
    cfg = get_preset("llama3_2_1b")
    assert ij.models.ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(KeyError, match="hidden"):
        ij.models.ModelConfig.from_dict({"hidden": 3})
    assert abs(get_preset("smollm2_135m").num_params() - 134_515_008) < 1e3
