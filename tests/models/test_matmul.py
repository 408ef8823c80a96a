"""Mixed-precision contractions: bf16 gradients match plain bf16 autodiff, float32 is untouched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import parallel
from instructjax.models import Transformer, get_preset
from instructjax.models.functional import init_params, stack_layers
from instructjax.models import transformer as transformer_module
from instructjax.models.matmul import contract

GPT2_TINY = get_preset("tiny").replace(arch="gpt2", norm="layer", activation="gelu_tanh", position="learned",
                                       qkv_bias=True, out_bias=True, tie_embeddings=True, max_len=64)
CONFIGS = {"llama": get_preset("tiny"), "gpt2_tied": GPT2_TINY,
           "llama_scan_remat": get_preset("tiny").replace(scan_layers=True, remat_policy="dots")}


def plain_contract(spec, x, w, dtype):
    """The contraction without the custom gradient: autodiff runs the backward on the float32 cotangent."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def loss_and_grads(cfg, params, monkeypatch=None, mesh=None):
    """Mean next-token cross-entropy of a random batch [8, 12] and its gradient, sharded over `mesh` if given."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 256, (8, 12)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (8, 12)), jnp.int32)
    if monkeypatch is not None:
        monkeypatch.setattr(transformer_module, "contract", plain_contract)

    def loss(p, tokens):
        logp = jax.nn.log_softmax(Transformer(cfg).apply({"params": p}, tokens), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    if mesh is None:
        return jax.jit(jax.value_and_grad(loss))(params, tokens)
    shardings = parallel.param_shardings(cfg, params, mesh)
    params, tokens = jax.device_put(params, shardings), jax.device_put(tokens, parallel.batch_sharding(mesh))
    with parallel.activation_sharding(mesh):
        return jax.jit(jax.value_and_grad(loss), out_shardings=(parallel.replicated(mesh), shardings))(params, tokens)


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]).astype(np.float64)


def assert_close_in_bf16(grads, ref_grads):
    g, ref = flat(grads), flat(ref_grads)
    assert np.linalg.norm(g - ref) / np.linalg.norm(ref) < 0.02
    assert g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref)) > 0.999


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_gradients_match_plain_bf16_autodiff(name, monkeypatch):
    cfg = CONFIGS[name].replace(dtype="bfloat16")
    params = init_params(cfg.replace(scan_layers=False), jax.random.key(0))
    if cfg.scan_layers:
        params = stack_layers(params)
    loss, grads = loss_and_grads(cfg, params)
    ref_loss, ref_grads = loss_and_grads(cfg, params, monkeypatch)
    assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, params)  # float32
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    assert_close_in_bf16(grads, ref_grads)


@pytest.mark.needs_devices(8)
@pytest.mark.parametrize("name", ["llama", "gpt2_tied"])
def test_bf16_gradients_sharded_equal_one_device(name):
    cfg = CONFIGS[name].replace(dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    loss, grads = loss_and_grads(cfg, params, mesh=parallel.make_mesh((2, 2, 2)))
    ref_loss, ref_grads = loss_and_grads(cfg, params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-3)
    assert_close_in_bf16(grads, ref_grads)


def test_float32_is_the_plain_einsum(monkeypatch):
    cfg = get_preset("tiny")
    params = init_params(cfg, jax.random.key(0))
    loss, grads = loss_and_grads(cfg, params)
    ref_loss, ref_grads = loss_and_grads(cfg, params, monkeypatch)
    assert float(loss) == float(ref_loss)
    jax.tree.map(np.testing.assert_array_equal, grads, ref_grads)


def test_contract_gradients_are_bf16_matmuls_accumulated_in_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 4, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((4, 8, 6)), jnp.float32)
    spec = "abij,iju->abu"
    y, vjp = jax.vjp(lambda x, w: contract(spec, x, w, jnp.bfloat16), x, w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    dx, dw = vjp(g)
    assert y.dtype == jnp.float32 and dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    g16, w16 = (np.asarray(a.astype(jnp.bfloat16), np.float64) for a in (g, w))
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(y, np.einsum(spec, x64, w16), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.einsum("abij,abu->iju", x64, g16), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx, np.float64), np.einsum("abu,iju->abij", g16, w16), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("spec, x_shape, w_shape", [
    ("abi,iu->abu", (3, 5, 8), (8, 6)),            # a projection
    ("abij,iju->abu", (3, 5, 4, 8), (4, 8, 6)),    # the attention output: two contracted indices
    ("abi,iuv->abuv", (3, 5, 8), (8, 4, 2)),       # q/k/v: two output indices
    ("btd,vd->btv", (3, 5, 8), (7, 8)),            # the tied LM head: the weight's indices the other way
    ("btkgd,bksd->bktgs", (2, 1, 3, 2, 4), (2, 3, 5, 4)),  # attention: batch indices, an einsum as before
])
def test_contract_equals_the_einsum_and_its_gradients(spec, x_shape, w_shape):
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (x_shape, w_shape))
    y, vjp = jax.vjp(lambda x, w: contract(spec, x, w, jnp.float32), x, w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    ref, ref_vjp = jax.vjp(lambda x, w: jnp.einsum(spec, x, w), x, w)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(g), ref_vjp(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_weight_gradients_contract_the_tokens_without_a_transposed_copy(dtype):
    """A projection of [batch, length, in] activations runs as one [tokens, in] x [in, out] matmul, so its
    weight gradient contracts one index both operands hold first: XLA:CPU's matmul reads it transposed.
    Over [batch, length] XLA would transpose a copy of the activations (docs/benchmarks.md)."""
    x = jnp.ones((4, 16, 32), jnp.float32)
    w = {"up": jnp.ones((32, 64), jnp.float32), "down": jnp.ones((64, 32), jnp.float32)}

    def loss(w, x):
        h = jax.nn.silu(contract("abi,iu->abu", x, w["up"], dtype))
        return jnp.sum(contract("abi,iu->abu", h, w["down"], dtype) ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).compile().as_text()
    assert hlo.count(" dot(") == 6 and " transpose(" not in hlo  # 2 forward, 4 backward
