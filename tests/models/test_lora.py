"""LoRA adapters: off = the base model, merge = the adapted model, only adapters trained."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from instructjax.models import Transformer, get_preset, lora
from instructjax.models.functional import init_params
from instructjax.train.config import base_config, lora_config
from instructjax.train.initial_model import with_adapters
from instructjax.train.sft import sft_loss_fn
from instructjax.train.state import TrainState, trainable
from instructjax.train.step import make_train_step

CFG = get_preset("tiny")
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 12)), jnp.int32)


def adapted(rank=4, targets=tuple(lora.TARGETS), seed=1):
    """(base params, LoRA cfg, params with adapters whose B is random, so that they change the model)."""
    params = init_params(CFG, jax.random.key(0))
    cfg, with_lora = with_adapters(CFG, params, lora.LoraConfig(rank=rank, alpha=8.0, targets=targets),
                                   jax.random.key(seed))
    rng = np.random.default_rng(seed)
    with_lora = jax.tree_util.tree_map_with_path(
        lambda path, x: rng.normal(0, 0.05, x.shape).astype(np.float32) if path[-1].key == "lora_b" else x,
        with_lora)
    return params, cfg, with_lora


def logits(cfg, params):
    return np.asarray(Transformer(cfg).apply({"params": params}, TOKENS))


def test_fresh_adapters_and_adapters_off_are_the_base_model():
    params, cfg, trained = adapted()
    base = logits(CFG, params)
    _, fresh = with_adapters(CFG, params, cfg.lora, jax.random.key(3))
    np.testing.assert_array_equal(logits(cfg, fresh), base)  # B = 0 at init (PEFT's init)
    np.testing.assert_array_equal(logits(CFG, lora.without_adapters(trained)), base)
    assert np.abs(logits(cfg, trained) - base).max() > 1e-2  # the adapters do change the model


def test_adapters_only_on_the_targets_with_peft_shapes():
    _, cfg, params = adapted(targets=("q_proj", "down_proj"))
    layer = params["layers_0"]
    assert set(layer["attn"]["q"]) == {"kernel", "lora_a", "lora_b"} and "lora_a" not in layer["attn"]["k"]
    assert layer["attn"]["q"]["lora_a"].shape == (CFG.d_model, 4)
    assert layer["attn"]["q"]["lora_b"].shape == (4, CFG.num_heads, CFG.head_dim)
    assert layer["mlp"]["down"]["lora_a"].shape == (CFG.ffn_dim, 4) and "lora_a" not in layer["mlp"]["up"]
    bound = 1 / np.sqrt(CFG.d_model)  # kaiming-uniform(a=sqrt(5)) as PEFT
    a = np.asarray(layer["attn"]["q"]["lora_a"])
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound


def test_merged_weights_equal_the_adapted_model():
    _, cfg, params = adapted()
    merged = lora.merged(params, cfg.lora)
    assert not lora.has_adapters(merged)
    np.testing.assert_allclose(logits(CFG, merged), logits(cfg, params), atol=2e-5)


def test_train_step_updates_only_the_adapters_and_keeps_no_state_for_the_base():
    _, cfg, params = adapted()
    tx = optax.adam(1e-2)
    state = TrainState.create(params, tx)
    num_adapter = sum(x.size for x in jax.tree.leaves(lora.adapters(params)))
    assert sum(x.size for x in jax.tree.leaves(state.opt_state)) == 2 * num_adapter + 1  # mu, nu, count
    batch = {"tokens": TOKENS, "positions": jnp.broadcast_to(jnp.arange(12), (2, 12)),
             "attention_mask": jnp.ones((2, 12), bool), "segment_ids": jnp.ones((2, 12), jnp.int32),
             "loss_mask": jnp.ones((2, 12), bool)}
    new, metrics = jax.jit(make_train_step(sft_loss_fn(cfg), tx))(state, batch, jax.random.key(0))
    assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    changed = jax.tree_util.tree_map_with_path(
        lambda path, a, b: (lora.is_adapter(path), bool(np.any(np.asarray(a) != np.asarray(b)))), params, new.params)
    for is_adapter, differs in jax.tree.leaves(changed, is_leaf=lambda x: isinstance(x, tuple)):
        assert differs == is_adapter


def test_a_reward_model_with_adapters_trains_its_score_head_too():
    cfg = CFG.replace(lora=lora.LoraConfig(rank=2))
    part = trainable(init_params(cfg, jax.random.key(0), head="scalar"))
    assert part["score_head"]["kernel"] is not None and part["embed"]["embedding"] is None
    assert part["layers_0"]["attn"]["q"]["kernel"] is None and part["layers_0"]["attn"]["q"]["lora_a"] is not None
    full = init_params(CFG, jax.random.key(0))
    assert trainable(full) is full  # no adapters: everything is trained


def test_lora_config_refuses_bad_values_and_scan_layers():
    with pytest.raises(ValueError, match="lora.targets"):
        lora.LoraConfig(rank=4, targets=("c_attn",))
    with pytest.raises(ValueError, match="lora.rank"):
        lora.LoraConfig(rank=0)
    with pytest.raises(ValueError, match="scan_layers"):
        CFG.replace(scan_layers=True, lora=lora.LoraConfig(rank=4))
    with pytest.raises(ValueError, match="gpt2"):
        get_preset("gpt2", lora=lora.LoraConfig(rank=4))


def test_lora_config_names_the_key_of_a_bad_value():
    config = base_config()
    assert lora_config(config) is None  # rank 0: off
    config.lora.rank = 4
    assert lora_config(config).scale == 4.0  # alpha 16 / rank 4
    config.lora.targets = ("c_attn",)
    with pytest.raises(ValueError, match=r"--config.lora.targets"):
        lora_config(config)
