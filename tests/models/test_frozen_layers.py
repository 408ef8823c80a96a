"""`frozen_layers`: the same forward, no gradient for the embeddings' lookup and the first N blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import instructjax as ij
from instructjax.models.functional import init_params


def test_frozen_layers_keep_the_forward_and_cut_the_gradient_below():
    cfg = ij.models.get_preset("tiny").replace(num_layers=3, tie_embeddings=False)
    frozen = cfg.replace(frozen_layers=2)
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)

    def loss(c, p):
        logits = ij.models.Transformer(c).apply({"params": p}, tokens)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    np.testing.assert_array_equal(loss(cfg, params), loss(frozen, params))
    full, cut = jax.grad(loss, argnums=1)(cfg, params), jax.grad(loss, argnums=1)(frozen, params)
    for name in ("embed", "layers_0", "layers_1"):
        assert all(not np.any(g) for g in jax.tree.leaves(cut[name])), name
    for name in ("layers_2", "final_norm", "lm_head"):
        for a, b in zip(jax.tree.leaves(full[name]), jax.tree.leaves(cut[name])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
            assert np.any(b)


def test_frozen_layers_are_checked():
    cfg = ij.models.get_preset("tiny")
    with pytest.raises(ValueError, match="frozen_layers"):
        cfg.replace(frozen_layers=cfg.num_layers + 1)
    with pytest.raises(ValueError, match="scan_layers"):
        cfg.replace(frozen_layers=1, scan_layers=True)
