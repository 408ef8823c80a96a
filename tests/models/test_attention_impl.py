"""ModelConfig.attention_impl: jax.nn.dot_product_attention ("xla") agrees with the einsum attention on
padded batches, packed segments, sliding windows, KV-cache decoding (and the sampler) and gradients;
the combinations it cannot run are refused. ("cudnn" needs a GPU: benchmarks/accelerator.py runs it.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import sampling
from instructjax.models import ModelConfig, Transformer
from instructjax.models.functional import init_params, stack_layers
from instructjax.models.transformer import init_cache
from instructjax.testing.prompts import left_padded
from instructjax.train.config import base_config
from instructjax.train.initial_model import with_overrides
from instructjax.testing.models import TINY_MODELS, random_tokens

# float32: the two implementations round differently only in the last bits; bfloat16: in the compute dtype
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}


def padded_batch():
    """Rows right-padded, left-padded and full (9 tokens: longer than the sliding window of 3)."""
    cols = np.arange(9)
    mask = np.stack([cols < 6, cols >= 2, cols >= 0])
    return random_tokens((3, 9), seed=1), jnp.asarray(mask)


def both(cfg, params, *args, **kwargs):
    """The outputs of the einsum and the xla implementation."""
    return [Transformer(cfg.replace(attention_impl=impl)).apply({"params": params}, *args, **kwargs)
            for impl in ("einsum", "xla")]


@pytest.mark.parametrize("dtype", sorted(TOLERANCE))
def test_padded_batch_agrees(model, dtype):
    cfg, params = model
    seq, mask = padded_batch()
    einsum, xla = both(cfg.replace(dtype=dtype), params, seq, attention_mask=mask)
    real = np.asarray(mask)
    np.testing.assert_allclose(xla[real], einsum[real], atol=TOLERANCE[dtype])
    assert np.isfinite(np.asarray(xla)).all()  # padding queries attend to nothing: no NaN


def test_packed_segments_agree(model):
    cfg, params = model
    segments = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 2, 2, 2, 2, 3, 3, 3]])
    positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0], [0, 1, 0, 1, 2, 3, 0, 1, 2]])
    mask = segments > 0
    einsum, xla = both(cfg, params, random_tokens((2, 9), seed=2), positions=positions, attention_mask=mask,
                       segment_ids=segments)
    np.testing.assert_allclose(xla, einsum, atol=TOLERANCE["float32"])


def test_kv_cache_decode_agrees(model):
    """Prefill of a left-padded batch, then decode steps that attend to the cache's slots through its mask."""
    cfg, params = model
    seq, mask = padded_batch()
    mask = mask.at[0].set(True)  # prompts end on a real token
    logits = {}
    for impl in ("einsum", "xla"):
        net = Transformer(cfg.replace(attention_impl=impl))
        out, cache = net.apply({"params": params}, seq[:, :5], attention_mask=mask[:, :5],
                               cache=init_cache(cfg, batch=3, max_len=9))
        steps = [out]
        for t in range(5, 9):
            out, cache = net.apply({"params": params}, seq[:, t:t + 1], cache=cache)
            steps.append(out)
        logits[impl] = np.concatenate(steps, axis=1)
    real = np.asarray(mask)
    np.testing.assert_allclose(logits["xla"][real], logits["einsum"][real], atol=TOLERANCE["float32"])


@pytest.mark.parametrize("name", ["llama", "mistral_window"])
def test_sampler_agrees(name):
    """The compiled sampler (prefill + 8 decode steps, greedy) gives the same tokens and log-probs."""
    cfg = TINY_MODELS[name]
    params = init_params(cfg, jax.random.key(0))
    prompts, mask = left_padded((3, 7, 5), cfg.vocab_size)
    out = {impl: sampling.generate(cfg.replace(attention_impl=impl), params, prompts, mask, rng=jax.random.key(0),
                                   max_new_tokens=8, temperature=0.0, ignore_eos=True)
           for impl in ("einsum", "xla")}
    np.testing.assert_array_equal(out["xla"].tokens, out["einsum"].tokens)
    np.testing.assert_allclose(out["xla"].logprobs, out["einsum"].logprobs, atol=TOLERANCE["float32"])


@pytest.mark.parametrize("dtype,remat,scan", [("float32", "none", False), ("float32", "dots", True),
                                              ("bfloat16", "none", False)])
def test_loss_gradients_agree(dtype, remat, scan):
    cfg = TINY_MODELS["mistral_window"].replace(dtype=dtype, remat_policy=remat, scan_layers=scan)
    params = init_params(cfg.replace(scan_layers=False), jax.random.key(0))
    params = stack_layers(params) if scan else params
    seq, mask = padded_batch()

    def loss(impl, p):
        logits = Transformer(cfg.replace(attention_impl=impl)).apply({"params": p}, seq, attention_mask=mask)
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, seq[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])

    grads = {impl: jax.grad(loss, argnums=1)(impl, params) for impl in ("einsum", "xla")}
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["einsum"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=TOLERANCE[dtype] * scale),
                 grads["xla"], grads["einsum"])


def test_unsupported_combinations_are_refused():
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        ModelConfig(attention_impl="flash")
    with pytest.raises(ValueError, match="attention_dropout=0.1 needs attention_impl='einsum'"):
        ModelConfig(attention_impl="xla", attention_dropout=0.1)
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs dtype bfloat16"):
        ModelConfig(attention_impl="cudnn")
    assert ModelConfig(attention_impl="cudnn", dtype="bfloat16").attention_impl == "cudnn"


def test_stage_configs_set_it_and_checkpoints_keep_the_default(tmp_path):
    """`--config.model.attention_impl=xla` reaches the run's ModelConfig; a loaded checkpoint's config
    keeps "einsum" until the run's model settings are applied."""
    pytest.importorskip("transformers")
    from instructjax import checkpoints
    from instructjax.testing.hf_models import save_tiny_hf_model

    cfg, params = checkpoints.load_hf(save_tiny_hf_model(tmp_path, "llama"))
    assert cfg.attention_impl == "einsum"
    model = base_config().model
    assert model.attention_impl == "einsum"
    model.attention_impl = "xla"
    assert with_overrides(cfg, params, model)[0].attention_impl == "xla"
