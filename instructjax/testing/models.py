"""Tiny models of each architecture family and random token batches, for the model tests."""

import jax.numpy as jnp
import numpy as np

from instructjax.models import get_preset

GPT2_TINY = get_preset("tiny").replace(arch="gpt2", norm="layer", activation="gelu_tanh", position="learned",
                                       qkv_bias=True, out_bias=True, tie_embeddings=True, max_len=64)
# Llama with grouped-query attention, GPT-2 (layer norm, learned positions, biases), Mistral's window
TINY_MODELS = {"llama": get_preset("tiny"), "gpt2": GPT2_TINY,
               "mistral_window": get_preset("tiny").replace(arch="mistral", sliding_window=3)}


def random_tokens(shape, seed=0):
    """int32 token ids below 256 (inside every tiny vocabulary)."""
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape), jnp.int32)
