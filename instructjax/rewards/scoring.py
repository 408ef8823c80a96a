"""Reward-model forward: the scalar head read at each sequence's last real token (docs/formulas.md#reward-model)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models import ModelConfig, Transformer


def last_token_index(mask: jax.Array) -> jax.Array:
    """int32 [...]: index of the last True of each row of `mask` [..., T] (left or right padding).

    For a completion ending in EOS that is the EOS. A row with no True gives T - 1 (its score is
    meaningless and must be masked by the caller).
    """
    t = mask.shape[-1]
    return (t - 1 - jnp.argmax(jnp.flip(mask.astype(bool), axis=-1), axis=-1)).astype(jnp.int32)


def sequence_scores(cfg: ModelConfig, params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [B]: the reward of each row of tokens int32 [B, T], mask bool [B, T] (True = real).

    One forward, the head computed only at each row's last real token; dropout off (docs/formulas.md#dropout-off).
    Positions come from the mask, so left- and right-padded rows score alike.
    """
    mask = mask.astype(bool)
    last = last_token_index(mask)
    out = Transformer(cfg, head="scalar").apply({"params": params}, tokens, attention_mask=mask,
                                                output_positions=last[:, None], deterministic=True)
    return out[:, 0]


def completion_scores(cfg: ModelConfig, params: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 [B, K]: scores of K completions per prompt, tokens/mask [B, K, T].

    The B * K rows go through ONE forward of batch B * K: each completion is forwarded once.
    """
    b, k, t = tokens.shape
    return sequence_scores(cfg, params, tokens.reshape(b * k, t), mask.reshape(b * k, t)).reshape(b, k)


def init_score_head(cfg: ModelConfig, rng: jax.Array) -> dict:
    """A fresh scalar head, as `Transformer(head="scalar")` initialises it: kernel N(0, 1/(d+1)), bias 0."""
    kernel = jax.random.normal(rng, (cfg.d_model, 1), jnp.float32) * (cfg.d_model + 1) ** -0.5
    dtype = jnp.dtype(cfg.param_dtype)
    return {"kernel": np.asarray(kernel, dtype), "bias": np.zeros((1,), dtype)}


def reward_params_from_lm(cfg: ModelConfig, lm_params: dict, rng: jax.Array) -> dict:
    """Reward-model params from a language model's (the SFT policy): its trunk, the LM head dropped,
    a fresh scalar head added. Params that already have a scalar head are returned as they are."""
    if "score_head" in lm_params:
        return dict(lm_params)
    params = {k: v for k, v in lm_params.items() if k != "lm_head"}
    params["score_head"] = init_score_head(cfg, rng)
    return params
