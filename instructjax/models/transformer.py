"""Decoder-only transformer (Llama / Mistral / Qwen2 and GPT-2 families) in flax.linen.

Parameters carry logical axis names (see `instructjax.parallel`). The KV cache is an explicit
`KVCache` pytree passed in and returned, so prefill and decode are pure functions.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models.attention import dot_product_attention
from instructjax.models.config import ModelConfig
from instructjax.models.lora import kaiming_uniform_a
from instructjax.models.matmul import BATCHED_CONTRACTION, CONTRACTION, contract

NEG_INF = float(np.finfo(np.float32).min)
REMAT_POLICIES = {  # every matmul of a block is a `contract`, saved by name (see instructjax.models.matmul)
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_only_these_names(CONTRACTION, BATCHED_CONTRACTION),
    "dots_no_batch": jax.checkpoint_policies.save_only_these_names(CONTRACTION),
}


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for `max_len` slots, plus which slots hold real tokens.

    Keys and values are one array per layer (a tuple) when layers are unrolled: a slice of a
    stacked array is a copy on XLA:CPU, and the [batch, kv_heads, slots, head_dim] layout is the
    one the attention matmuls read directly (no transposed copy of the cache in every step).
    With `scan_layers` they are stacked, [layers, batch, kv_heads, max_len, head_dim].
    """

    k: Any  # tuple of `layers` [batch, kv_heads, max_len, head_dim], or stacked (scan_layers)
    v: Any  # same as k
    mask: jax.Array  # bool [batch, max_len]: slot holds a real token
    positions: jax.Array  # int32 [batch, max_len]: position id of the token in each slot
    index: jax.Array  # int32 []: first free slot
    next_position: jax.Array  # int32 [batch]: position id of the next token of each row


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of at most `max_len` tokens (`dtype`: default the compute dtype)."""
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    dtype = jnp.dtype(dtype or cfg.dtype)
    if cfg.scan_layers:
        k, v = jnp.zeros((cfg.num_layers,) + shape, dtype), jnp.zeros((cfg.num_layers,) + shape, dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(
        k=k, v=v,
        mask=jnp.zeros((batch, max_len), bool), positions=jnp.zeros((batch, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32), next_position=jnp.zeros((batch,), jnp.int32))


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position ids that skip padding: cumsum(mask) - 1, clipped at 0 (docs/formulas.md#positions)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """RoPE inverse frequencies, with Llama-3 scaling when configured (as in HF `rope_type: llama3`)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq.astype(np.float32)
    low_wavelen = s.original_max_len / s.low_freq_factor
    high_wavelen = s.original_max_len / s.high_freq_factor
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotate [B, T, heads, head_dim] by positions [B, T], HF's rotate-half layout."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, head_dim/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _init(cfg: ModelConfig, axes: tuple, std: Optional[float] = None):
    return nn.with_logical_partitioning(nn.initializers.normal(std or cfg.initializer_range), axes)


class Norm(nn.Module):
    """RMSNorm (computed in float32 as in HF Llama) or LayerNorm with bias."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        pdtype, dtype = jnp.dtype(cfg.param_dtype), jnp.dtype(cfg.dtype)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                           (cfg.d_model,), pdtype)
        x32 = x.astype(jnp.float32)
        if cfg.norm == "rms":
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.norm_eps)
            return y.astype(dtype) * scale.astype(dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                          (cfg.d_model,), pdtype)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


class Projection(nn.Module):
    """`x` contracted over its last `n_in` dims with a kernel of `shape` (+ bias over the output dims),
    plus the LoRA update (alpha / r) x.A.B when `cfg.lora` targets this projection's name.

    Written out (not nn.DenseGeneral) so kernels keep their true shape under logical partitioning.
    """

    cfg: ModelConfig
    shape: tuple
    axes: tuple
    n_in: int = 1
    use_bias: bool = False
    deterministic: bool = True  # no LoRA dropout

    @nn.compact
    def __call__(self, x):
        dtype, pdtype = jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
        kernel = self.param("kernel", _init(self.cfg, self.axes), self.shape, pdtype)
        # accumulate in f32 and round once: XLA:CPU then runs bf16 weights natively instead of
        # converting every weight to f32 on every call (5x slower bf16 decoding)
        batch, contracted = "abcdefgh"[:x.ndim - self.n_in], "ijkl"[:self.n_in]
        features = "uvwxyz"[:len(self.shape) - self.n_in]
        y = contract(f"{batch}{contracted},{contracted}{features}->{batch}{features}", x, kernel, dtype)
        lora = self.cfg.lora
        if lora is not None and lora.targets_projection(self.name):
            in_shape, in_axes = self.shape[:self.n_in], self.axes[:self.n_in]
            a = self.param("lora_a", nn.with_logical_partitioning(kaiming_uniform_a, in_axes + (None,)),
                           in_shape + (lora.rank,), pdtype)
            b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None,) + self.axes[self.n_in:]),
                           (lora.rank,) + self.shape[self.n_in:], pdtype)
            h = nn.Dropout(lora.dropout)(x, deterministic=self.deterministic or lora.dropout == 0)
            h = contract(f"{batch}{contracted},{contracted}r->{batch}r", h, a, dtype).astype(dtype)
            y = y + lora.scale * contract(f"{batch}r,r{features}->{batch}{features}", h, b, dtype)
        y = y.astype(dtype)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[self.n_in:]),
                              self.shape[self.n_in:], pdtype)
            y = y + bias.astype(dtype)
        return y


class Attention(nn.Module):
    """Grouped-query attention with RoPE or none, writing into the KV cache when one is given.

    `cfg.attention_impl` "einsum" runs it as two `contract`s; "xla" / "cudnn" through
    `jax.nn.dot_product_attention` (instructjax.models.attention), with the same mask.
    """

    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, positions, cache_kv, layer_index, cache_index):
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)

        def proj(name, heads, bias):
            return Projection(cfg, (cfg.d_model, heads, cfg.head_dim), ("embed", "heads", "head_dim"),
                              use_bias=bias, deterministic=self.deterministic, name=name)(x)

        q = proj("q", cfg.num_heads, cfg.qkv_bias)
        k = proj("k", cfg.num_kv_heads, cfg.qkv_bias)
        v = proj("v", cfg.num_kv_heads, cfg.qkv_bias)
        if cfg.position == "rope":
            inv_freq = rope_inverse_frequencies(cfg)
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

        if cache_kv is not None:  # write the new keys/values into this layer's slots, read all slots
            cache_k, cache_v = cache_kv
            new_k, new_v = k.swapaxes(1, 2).astype(cache_k.dtype), v.swapaxes(1, 2).astype(cache_v.dtype)
            if cache_k.ndim == 4:  # this layer's own [batch, kv_heads, slots, head_dim] buffers
                start = (0, 0, cache_index, 0)
                cache_k = jax.lax.dynamic_update_slice(cache_k, new_k, start)
                cache_v = jax.lax.dynamic_update_slice(cache_v, new_v, start)
                k, v = cache_k, cache_v  # attention runs in the cache's dtype
            else:  # stacked over layers (scan_layers)
                start = (layer_index, 0, 0, cache_index, 0)
                cache_k = jax.lax.dynamic_update_slice(cache_k, new_k[None], start)
                cache_v = jax.lax.dynamic_update_slice(cache_v, new_v[None], start)
                k, v = cache_k[layer_index], cache_v[layer_index]
            cache_kv = (cache_k, cache_v)

        b, t = q.shape[:2]
        if cfg.attention_impl == "einsum":
            groups = cfg.num_heads // cfg.num_kv_heads
            q = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
            kv_spec = "bskd" if cache_kv is None else "bksd"
            # the matmuls' natural output orders (no transposed copy of the scores), attention in k's dtype
            scores = contract(f"btkgd,{kv_spec}->bktgs", q, k, k.dtype) * (cfg.head_dim ** -0.5)
            scores = jnp.where(mask[:, None, :, None, :], scores, NEG_INF)
            probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
            if cfg.attention_dropout > 0:
                probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=self.deterministic)
            out = contract(f"bktgs,{kv_spec}->bktgd", probs, v, v.dtype).transpose(0, 2, 1, 3, 4)
        else:
            out = dot_product_attention(q, k, v, mask, implementation=cfg.attention_impl, cached=cache_kv is not None)
        out = out.astype(dtype).reshape(b, t, cfg.num_heads, cfg.head_dim)
        out = Projection(cfg, (cfg.num_heads, cfg.head_dim, cfg.d_model), ("heads", "head_dim", "embed"), n_in=2,
                         use_bias=cfg.out_bias, deterministic=self.deterministic, name="o")(out)
        return out, cache_kv


class Mlp(nn.Module):
    """SwiGLU (Llama family) or GELU (GPT-2) feed-forward block."""

    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg

        def dense(name, features, axes, inp):
            return Projection(cfg, (inp.shape[-1], features), axes, use_bias=cfg.out_bias,
                              deterministic=self.deterministic, name=name)(inp)

        if cfg.activation == "silu":
            h = nn.silu(dense("gate", cfg.ffn_dim, ("embed", "mlp"), x)) * dense("up", cfg.ffn_dim, ("embed", "mlp"), x)
        else:
            h = nn.gelu(dense("up", cfg.ffn_dim, ("embed", "mlp"), x), approximate=True)
        return dense("down", cfg.d_model, ("mlp", "embed"), h)


class Block(nn.Module):
    """Pre-norm transformer block. Carry is (hidden, cache_k, cache_v) so it scans over layers."""

    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, layer_index, mask, positions, cache_index):
        cfg = self.cfg
        x, cache_k, cache_v = carry
        cache_kv = None if cache_k is None else (cache_k, cache_v)
        h, cache_kv = Attention(cfg, self.deterministic, name="attn")(
            Norm(cfg, name="attn_norm")(x), mask, positions, cache_kv, layer_index, cache_index)
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic or cfg.dropout_rate == 0)
        h = Mlp(cfg, self.deterministic, name="mlp")(Norm(cfg, name="mlp_norm")(x))
        x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic or cfg.dropout_rate == 0)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))
        new_carry = (x,) + (cache_kv if cache_kv is not None else (None, None))
        return new_carry, None


def attention_mask_without_cache(attention_mask, positions, segment_ids, sliding_window):
    """bool [B, T, T]: causal, real keys only, same segment, inside the window."""
    t = attention_mask.shape[1]
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & attention_mask[:, None, :]
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    if sliding_window is not None:
        mask &= (positions[:, :, None] - positions[:, None, :]) < sliding_window
    return mask


def attention_mask_with_cache(cache: KVCache, positions, sliding_window):
    """bool [B, T, S] for T new tokens at slots cache.index.. attending to all filled slots."""
    t, s = positions.shape[1], cache.mask.shape[1]
    query_slots = cache.index + jnp.arange(t)
    mask = (jnp.arange(s)[None, :] <= query_slots[:, None])[None] & cache.mask[:, None, :]
    if sliding_window is not None:
        mask &= (positions[:, :, None] - cache.positions[:, None, :]) < sliding_window
    return mask


class Transformer(nn.Module):
    """Decoder-only LM. head="lm" returns float32 logits [B, T, V]; head="scalar" float32 scores [B, T].

    With `cache`, the tokens are written to the cache's next slots and `(output, new_cache)` is
    returned; positions then continue from `cache.next_position`. `output_positions` (int32 [B, K])
    computes the head only at those indices of T (e.g. the last prompt token when sampling).
    """

    cfg: ModelConfig
    head: str = "lm"

    @nn.compact
    def __call__(self, tokens, positions=None, attention_mask=None, *, segment_ids=None,
                 cache: Optional[KVCache] = None, deterministic: bool = True, return_hidden: bool = False,
                 output_positions: Optional[jax.Array] = None):
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        attention_mask = attention_mask.astype(bool)
        if positions is None:
            positions = positions_from_mask(attention_mask)
            if cache is not None:
                positions = positions + cache.next_position[:, None]

        if cache is not None:
            cache = cache.replace(
                mask=jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, cache.index)),
                positions=jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32),
                                                       (0, cache.index)))
            mask = attention_mask_with_cache(cache, positions, cfg.sliding_window)
        else:
            mask = attention_mask_without_cache(attention_mask, positions, segment_ids, cfg.sliding_window)

        embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                         embedding_init=_init(cfg, ("vocab", "embed")), name="embed")
        x = embed(tokens)
        if cfg.position == "learned":
            x = x + nn.Embed(cfg.max_len, cfg.d_model, dtype=dtype, param_dtype=pdtype,
                             embedding_init=_init(cfg, ("max_len", "embed")), name="pos_embed")(positions)
        x = nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        cache_index = cache.index if cache is not None else jnp.zeros((), jnp.int32)
        if cfg.scan_layers:
            carry = (x, None, None) if cache is None else (x, cache.k, cache.v)
            layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                             metadata_params={nn.PARTITION_NAME: "layers"})
            carry, _ = layers(cfg, deterministic, name="layers")(
                carry, jnp.arange(cfg.num_layers), mask, positions, cache_index)
        else:
            new_k, new_v = [], []
            for i in range(cfg.num_layers):
                layer_carry = (x, None, None) if cache is None else (x, cache.k[i], cache.v[i])
                (x, layer_k, layer_v), _ = block(cfg, deterministic, name=f"layers_{i}")(
                    layer_carry, i, mask, positions, cache_index)
                new_k.append(layer_k)
                new_v.append(layer_v)
                if i + 1 == cfg.frozen_layers:  # XLA drops the backward of everything below
                    x = jax.lax.stop_gradient(x)
            carry = (x, tuple(new_k), tuple(new_v))
        x = Norm(cfg, name="final_norm")(carry[0])
        if output_positions is not None:  # head (and returned hidden) only at these indices [B, K] of T
            x = jnp.take_along_axis(x, output_positions[..., None].astype(jnp.int32), axis=1)

        if self.head == "lm":
            if cfg.tie_embeddings:  # contracted as stored: a transposed bf16 embedding breaks XLA:CPU's backward
                out = contract("btd,vd->btv", x, embed.embedding, dtype)
            else:
                kernel = self.param("lm_head", _init(cfg, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), pdtype)
                out = contract("btd,dv->btv", x, kernel, dtype)
        elif self.head == "scalar":
            out = nn.Dense(1, dtype=jnp.float32, param_dtype=pdtype, name="score_head",
                           kernel_init=_init(cfg, ("embed", None), std=(cfg.d_model + 1) ** -0.5),
                           bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)[..., 0]
        else:
            raise ValueError(f"Transformer.head={self.head!r}: expected 'lm' or 'scalar'")
        out = out.astype(jnp.float32)
        if return_hidden:
            out = (out, x)
        if cache is None:
            return out
        next_position = jnp.max(jnp.where(attention_mask, positions + 1, 0), axis=1).astype(jnp.int32)
        return out, cache.replace(k=carry[1], v=carry[2], index=cache.index + tokens.shape[1],
                                  next_position=jnp.maximum(next_position, cache.next_position))
