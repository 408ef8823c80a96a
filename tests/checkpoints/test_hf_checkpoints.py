"""load_hf / save_hf: config mapping, layouts, round trips through transformers, bad input."""

import json
import os
import re
import stat

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy

pytest.importorskip("torch")
pytest.importorskip("transformers")

from instructjax import checkpoints  # noqa: E402
from instructjax.checkpoints.hf import config_from_hf  # noqa: E402
from instructjax.models import ModelConfig, Transformer, get_preset  # noqa: E402
from instructjax.models.config import RopeScaling  # noqa: E402
from instructjax.models.functional import init_params  # noqa: E402
from instructjax.testing import tiny_tokenizer  # noqa: E402
from instructjax.testing.hf_models import hf_outputs, load_hf_model, save_tiny_hf_model  # noqa: E402

SMALL = dict(vocab_size=96, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, ffn_dim=64,
             max_len=64)
EXPORT_CONFIGS = {
    "llama_tiny_preset": get_preset("tiny"),
    "llama_biases": ModelConfig(arch="llama", qkv_bias=True, out_bias=True, **SMALL),
    "llama3_rope": ModelConfig(arch="llama", rope_scaling=RopeScaling(8.0, 1.0, 4.0, 32), **SMALL),
    "mistral_window": ModelConfig(arch="mistral", sliding_window=4, **{**SMALL, "head_dim": 16}),
    "qwen2_window_tied": ModelConfig(arch="qwen2", qkv_bias=True, tie_embeddings=True, sliding_window=4, **SMALL),
    "gpt2": ModelConfig(arch="gpt2", norm="layer", activation="gelu_tanh", position="learned", qkv_bias=True,
                        out_bias=True, tie_embeddings=True, **{**SMALL, "num_kv_heads": 4}),
}


def random_params(cfg, head="lm", seed=0):
    """init_params plus noise on every leaf, so that zero biases and unit norms hide no mapping."""
    params = init_params(cfg, jax.random.key(seed), head)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(treedef, [np.asarray(x + 0.2 * jax.random.normal(k, x.shape, x.dtype))
                                        for x, k in zip(leaves, keys)])


def right_padded(vocab, lengths=(9, 6, 3), seed=0):
    """Tokens (ids >= 3: never the tiny tokenizer's pad/eos 2) and mask, right-padded with id 2."""
    rng = np.random.default_rng(seed)
    tokens, mask = np.full((len(lengths), max(lengths)), 2, np.int32), np.zeros((len(lengths), max(lengths)), bool)
    for i, n in enumerate(lengths):
        tokens[i, :n], mask[i, :n] = rng.integers(3, vocab, n), True
    return tokens, mask


def apply(cfg, params, tokens, mask, head="lm"):
    return np.asarray(Transformer(cfg, head=head).apply({"params": params}, tokens, attention_mask=mask))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# -- config.json -------------------------------------------------------------------------------


def test_config_mapping_of_transformers_checkpoints(tmp_path):
    cfg, _ = checkpoints.load_hf(save_tiny_hf_model(tmp_path / "l3", "llama3"))
    assert cfg.arch == "llama" and cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64) and cfg.max_len == 128
    cfg, _ = checkpoints.load_hf(save_tiny_hf_model(tmp_path / "m", "mistral"))
    assert (cfg.arch, cfg.sliding_window, cfg.head_dim, cfg.d_model, cfg.num_kv_heads) == ("mistral", 4, 16, 32, 2)
    cfg, _ = checkpoints.load_hf(save_tiny_hf_model(tmp_path / "q", "qwen2"))
    assert (cfg.qkv_bias, cfg.out_bias, cfg.tie_embeddings, cfg.sliding_window) == (True, False, True, None)
    cfg, _ = checkpoints.load_hf(save_tiny_hf_model(tmp_path / "g", "gpt2"))
    assert (cfg.norm, cfg.activation, cfg.position, cfg.max_len, cfg.ffn_dim) == ("layer", "gelu_tanh", "learned",
                                                                               64, 128)


def test_transformers4_and_5_rope_keys_agree():
    base = dict(architectures=["LlamaForCausalLM"], vocab_size=10, hidden_size=8, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=16)
    scaling = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    v4 = dict(base, rope_theta=5e5, rope_scaling=dict(scaling, type="llama3"))
    v5 = dict(base, rope_parameters=dict(scaling, rope_type="llama3", rope_theta=5e5))
    assert config_from_hf(v4) == config_from_hf(v5)
    assert config_from_hf(v5)[0].rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert config_from_hf(v5)[0].rope_theta == 5e5 and config_from_hf(base)[0].rope_theta == 10000.0


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    single = checkpoints.load_hf(save_tiny_hf_model(tmp_path / "single", "llama"))
    sharded_dir = save_tiny_hf_model(tmp_path / "sharded", "llama", max_shard_size="20KB")
    assert (sharded_dir / "model.safetensors.index.json").is_file() and len(list(sharded_dir.glob("*.safetensors"))) > 1
    sharded = checkpoints.load_hf(sharded_dir)
    assert sharded[0] == single[0]
    assert_trees_equal(sharded[1], single[1])


def test_hub_style_gpt2_without_prefix_and_with_mask_buffers(tmp_path):
    """openai-community/gpt2 was saved from GPT2Model: no `transformer.` prefix, plus `attn.bias` buffers."""
    path = save_tiny_hf_model(tmp_path, "gpt2")
    want = checkpoints.load_hf(path)
    tensors = safetensors.numpy.load_file(path / "model.safetensors")
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    safetensors.numpy.save_file(tensors, path / "model.safetensors")
    got = checkpoints.load_hf(path)
    assert got[0] == want[0]
    assert_trees_equal(got[1], want[1])


def test_bfloat16_checkpoints(tmp_path):
    cfg = EXPORT_CONFIGS["llama_biases"].replace(param_dtype="bfloat16")
    params = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), random_params(cfg))
    checkpoints.save_hf(tmp_path, cfg, params)
    with safetensors.safe_open(tmp_path / "model.safetensors", "np") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == ml_dtypes.bfloat16
    cfg32, params32 = checkpoints.load_hf(tmp_path)
    assert cfg32.param_dtype == "float32" and jax.tree.leaves(params32)[0].dtype == np.float32
    assert_trees_equal(params32, jax.tree.map(lambda x: x.astype(np.float32), params))
    cfg16, params16 = checkpoints.load_hf(tmp_path, dtype="bfloat16")
    assert (cfg16.dtype, cfg16.param_dtype) == ("bfloat16", "bfloat16")
    assert_trees_equal(params16, params)


# -- save_hf -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPORT_CONFIGS)
def test_export_loads_in_transformers_with_the_same_logits(name, tmp_path):
    cfg = EXPORT_CONFIGS[name]
    params = random_params(cfg)
    checkpoints.save_hf(tmp_path, cfg, params)
    tokens, mask = right_padded(cfg.vocab_size)
    diff = np.abs(apply(cfg, params, tokens, mask) - hf_outputs(load_hf_model(tmp_path), tokens, mask))[mask].max()
    print(f"{name}: max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-4
    cfg_back, params_back = checkpoints.load_hf(tmp_path)
    assert cfg_back == cfg
    assert_trees_equal(params_back, params)


def test_export_of_scanned_params_equals_unscanned(tmp_path):
    cfg = EXPORT_CONFIGS["llama_biases"]
    params = random_params(cfg)
    checkpoints.save_hf(tmp_path / "flat", cfg, params)
    scan_cfg, scanned = checkpoints.load_hf(tmp_path / "flat", scan_layers=True)
    checkpoints.save_hf(tmp_path / "scanned", scan_cfg, scanned)
    assert_trees_equal(safetensors.numpy.load_file(tmp_path / "scanned" / "model.safetensors"),
                       safetensors.numpy.load_file(tmp_path / "flat" / "model.safetensors"))


@pytest.mark.parametrize("name", ["llama_tiny_preset", "gpt2"])
def test_scalar_head_exports_as_sequence_classifier(name, tmp_path):
    cfg = EXPORT_CONFIGS[name]
    params = random_params(cfg, head="scalar")
    params["score_head"]["bias"] = np.array([0.7], np.float32)
    tokens, mask = right_padded(cfg.vocab_size)
    scores = apply(cfg, params, tokens, mask, head="scalar")
    last = scores[np.arange(len(tokens)), mask.sum(1) - 1]
    if cfg.norm == "rms":  # transformers has no score bias: exported scores are lower by it
        with pytest.warns(UserWarning, match="no score bias"):
            checkpoints.save_hf(tmp_path, cfg, params, tokenizer=tiny_tokenizer())
        last = last - 0.7
    else:  # GPT-2: folded exactly into the final LayerNorm bias
        checkpoints.save_hf(tmp_path, cfg, params, tokenizer=tiny_tokenizer())
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["architectures"][0].endswith("ForSequenceClassification")
    # transformers scores the rightmost token != pad_token_id: the export pads with <|endoftext|> (0), not EOS (2)
    assert hf_config["pad_token_id"] == 0 != hf_config["eos_token_id"]
    assert (tmp_path / "tokenizer.json").is_file()
    import torch

    model = load_hf_model(tmp_path, head="scalar")
    with torch.no_grad():
        hf_tokens = np.where(mask, tokens, hf_config["pad_token_id"])
        hf_last = model(input_ids=torch.as_tensor(hf_tokens).long(), attention_mask=torch.as_tensor(mask).long())
    diff = np.abs(hf_last.logits[:, 0].numpy() - last).max()
    print(f"{name}: max |ours - transformers| last-token score = {diff:.2e}")
    assert diff <= 1e-4
    cfg_back, params_back = checkpoints.load_hf(tmp_path)
    np.testing.assert_allclose(apply(cfg_back, params_back, tokens, mask, "scalar")[mask], scores[mask], atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def llama_dir(tmp_path):
    return save_tiny_hf_model(tmp_path / "llama", "llama")


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_config_json(llama_dir):
    (llama_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(llama_dir / "config.json")) + ": missing"):
        checkpoints.load_hf(llama_dir)


def test_missing_safetensors(llama_dir):
    (llama_dir / "model.safetensors").rename(llama_dir / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=re.escape(str(llama_dir)) + r": no model.safetensors.*pickles never"):
        checkpoints.load_hf(llama_dir)


@pytest.mark.parametrize("keep_bytes", [5, 200, -100])
def test_truncated_safetensors(llama_dir, keep_bytes):
    file = llama_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[:keep_bytes])
    with pytest.raises(ValueError, match=re.escape(str(file)) + ": not a readable safetensors file"):
        checkpoints.load_hf(llama_dir)


def test_wrong_tensor_shape(llama_dir):
    edit_config(llama_dir, intermediate_size=48)
    with pytest.raises(ValueError, match=re.escape(str(llama_dir / "model.safetensors")) +
                       r": tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape \[\d+, \d+\], expected"):
        checkpoints.load_hf(llama_dir)


def test_missing_and_unexpected_tensors(llama_dir):
    file = llama_dir / "model.safetensors"
    tensors = safetensors.numpy.load_file(file)
    extra = {**tensors, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}
    safetensors.numpy.save_file(extra, file)
    with pytest.raises(ValueError, match=re.escape(str(llama_dir)) + r": unexpected tensors \['model.layers.0.mlp"):
        checkpoints.load_hf(llama_dir)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(tensors, file)
    with pytest.raises(ValueError, match=re.escape(str(llama_dir)) + r": missing tensors \['model.layers.1.mlp.up_"):
        checkpoints.load_hf(llama_dir)


def test_untied_lm_head_in_a_tied_checkpoint(llama_dir):
    file = llama_dir / "model.safetensors"
    edit_config(llama_dir, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tie_word_embeddings is true but lm_head.weight differs"):
        checkpoints.load_hf(llama_dir)
    tensors = safetensors.numpy.load_file(file)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    safetensors.numpy.save_file(tensors, file)
    cfg, params = checkpoints.load_hf(llama_dir)
    assert cfg.tie_embeddings and "lm_head" not in params


@pytest.mark.parametrize("changes, problem", [
    (dict(architectures=["FalconForCausalLM"]), "architectures=.*unknown architecture"),
    (dict(architectures=None, model_type="falcon"), "model_type='falcon': unknown architecture"),
    (dict(architectures=["LlamaForSequenceClassification"], id2label={"0": "a", "1": "b"}), "with 2 labels"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "rope type 'yarn' is not supported"),
    (dict(hidden_act="gelu"), "hidden_act='gelu': only 'silu'"),
    (dict(hidden_size=None), "missing key 'hidden_size'"),
])
def test_bad_config_json(llama_dir, changes, problem):
    edit_config(llama_dir, **changes)
    with pytest.raises(ValueError, match=re.escape(str(llama_dir / "config.json")) + ": .*" + problem):
        checkpoints.load_hf(llama_dir)


def test_save_rejects_what_transformers_cannot_express(tmp_path):
    cfg = EXPORT_CONFIGS["llama_biases"].replace(arch="mistral")
    with pytest.raises(ValueError, match="ModelConfig.qkv_bias=True cannot be expressed in transformers' Mistral"):
        checkpoints.save_hf(tmp_path, cfg, random_params(cfg))
    cfg = EXPORT_CONFIGS["llama_tiny_preset"]
    params = {**random_params(cfg), "lm_head": np.zeros((cfg.d_model, cfg.vocab_size), np.float32)}
    with pytest.raises(ValueError, match=r"params \['lm_head'\] have no place"):
        checkpoints.save_hf(tmp_path, cfg.replace(tie_embeddings=True), params)


def test_exported_files_have_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        cfg = EXPORT_CONFIGS["llama_biases"]
        checkpoints.save_hf(tmp_path / "export", cfg, random_params(cfg), tokenizer=tiny_tokenizer())
    finally:
        os.umask(old)
    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in (tmp_path / "export").iterdir()}
    assert "model.safetensors" in modes and "config.json" in modes
    assert set(modes.values()) == {"0o644"}, modes
