"""Attention through `jax.nn.dot_product_attention`: XLA's implementation, or cuDNN flash attention on GPUs.

`Attention` (instructjax.models.transformer) calls `dot_product_attention` when
`ModelConfig.attention_impl` is "xla" or "cudnn"; "einsum" keeps its own contractions.
"""

from __future__ import annotations

import jax
from jax.ad_checkpoint import checkpoint_name

from instructjax.models.matmul import BATCHED_CONTRACTION


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, implementation: str,
                          cached: bool) -> jax.Array:
    """q [B, T, heads, D] attending to k, v where mask bool [B, T, S] is True: [B, T, heads, D] in k's dtype.

    k, v: [B, S, kv_heads, D], or the KV cache's [B, kv_heads, S, D] when `cached`. Without a cache the
    mask is causal, and `is_causal` tells cuDNN so (it skips the blocks above the diagonal). The output is
    named like a batched contraction for the remat policies (instructjax.models.matmul).
    """
    if cached:
        k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)
    out = jax.nn.dot_product_attention(q.astype(k.dtype), k, v, mask=mask[:, None], is_causal=not cached,
                                       implementation=implementation)
    return checkpoint_name(out, BATCHED_CONTRACTION)
