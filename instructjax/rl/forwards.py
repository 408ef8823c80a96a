"""The model read at the response tokens of prompt + response rows, dropout off (docs/formulas.md#token-alignment,
#dropout-off): logits, tempered logprobs, a value model's values, and logits and values of a policy with a
value head in one trunk forward."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from instructjax.losses import token_logprobs
from instructjax.models import ModelConfig, Transformer
from instructjax.rl.value_head import VALUE_HEAD


def response_positions(prompt_len: int, num_new: int, rows: int) -> jax.Array:
    """int32 [B, N]: the model output index read for response token t is prompt_len + t - 1
    (docs/formulas.md#token-alignment)."""
    return jnp.broadcast_to(jnp.arange(prompt_len - 1, prompt_len - 1 + num_new, dtype=jnp.int32), (rows, num_new))


def response_outputs(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array, num_new: int,
                     head: str = "lm", return_hidden: bool = False):
    """The model's `head` output [B, N, ...] at the state before each response token, dropout off
    (docs/formulas.md#token-alignment, #dropout-off)."""
    rows, total = tokens.shape
    return Transformer(cfg, head=head).apply({"params": params}, tokens, attention_mask=attention_mask,
                                             deterministic=True, return_hidden=return_hidden,
                                             output_positions=response_positions(total - num_new, num_new, rows))


def response_logits(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                    num_new: int) -> jax.Array:
    """float32 [B, N, V]: logits predicting each response token."""
    return response_outputs(cfg, params, tokens, attention_mask, num_new)


def response_logprobs(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                      response_mask: jax.Array, temperature: float) -> jax.Array:
    """float32 [B, N]: log_softmax(logits / T) of each response token, 0 where masked."""
    num_new = response_mask.shape[1]
    logits = response_logits(cfg, params, tokens, attention_mask, num_new)
    return jnp.where(response_mask, token_logprobs(logits, tokens[:, -num_new:], temperature), 0.0)


def response_values(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                    response_mask: jax.Array) -> jax.Array:
    """float32 [B, N]: a value model's scalar head at the state before each response token
    (docs/formulas.md#value-model)."""
    values = response_outputs(cfg, params, tokens, attention_mask, response_mask.shape[1], head="scalar")
    return jnp.where(response_mask, values.astype(jnp.float32), 0.0)


def response_logits_and_values(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                               response_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits float32 [B, N, V], values float32 [B, N]) of a policy with a value head (`add_value_head`):
    ONE trunk forward, the LM head and the value head both read from its final hidden states."""
    logits, hidden = response_outputs(cfg, params, tokens, attention_mask, response_mask.shape[1],
                                      return_hidden=True)
    head = params[VALUE_HEAD]
    values = jnp.einsum("bnd,d->bn", hidden.astype(jnp.float32), head["kernel"][:, 0].astype(jnp.float32))
    return logits, jnp.where(response_mask, values + head["bias"][0].astype(jnp.float32), 0.0)
