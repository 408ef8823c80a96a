"""Compiled sampling: prefill of left-padded prompts into a KV cache, then a `lax.while_loop` of
decode steps, all in one jit (docs/architecture.md, "What runs compiled").

`generate` is compiled once per (rows, bucketed prompt length, max_new_tokens, sampling settings,
model config, mesh). Prompts are left-padded up to a bucket (`bucket_length`) so that prompts of
nearby lengths share one compilation. The loop stops as soon as every row has produced a stop
token, or after `max_new_tokens`.

Logprobs (docs/formulas.md#tempered-logprobs): `log_softmax(logits / temperature)` of the sampled token, over
the full vocabulary (top-k / top-p only restrict which tokens may be drawn); at temperature 0
(greedy) they are `log_softmax(logits)`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Callable, Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from instructjax.models.config import ModelConfig
from instructjax.models.transformer import KVCache, Transformer, init_cache
from instructjax.parallel import BATCH_AXES, host_values

__all__ = ["generate"]  # the rest: `from instructjax.sampling import name`


@flax.struct.dataclass
class SampleOutput:
    """What `generate` returns; R = prompts * n rows in prompt-major order (row = prompt * n + sample)."""

    tokens: jax.Array  # int32 [R, N]: sampled tokens, pad_id after the row ended
    mask: jax.Array  # bool [R, N]: True up to and including the stop token
    logprobs: jax.Array  # float32 [R, N]: log_softmax(logits / T) of each sampled token (0 where masked)
    ended: jax.Array  # bool [R]: the row produced a stop token within max_new_tokens
    num_steps: jax.Array  # int32 []: token columns produced before the loop exited (<= N)
    prompt_tokens: jax.Array  # int32 [R, P']: the prompts as run (repeated n times, left-padded to the bucket)
    prompt_mask: jax.Array  # bool [R, P']
    values: Optional[jax.Array] = None  # float32 [R, N]: value model output at the state before each token

    @property
    def lengths(self) -> jax.Array:
        """int32 [R]: number of valid response tokens per row (EOS included)."""
        return jnp.sum(self.mask, axis=-1, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything static about one compiled sampling loop."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    eos_ids: tuple
    pad_id: int
    ignore_eos: bool
    dtype: str
    cache_dtype: str
    batch_axes: tuple
    stream: bool
    samples_per_prompt: int = 1  # > 1: prompts are prefilled once, their cache repeated for each sample


def bucket_length(length: int, multiple: int = 64, minimum: int = 8) -> int:
    """Bucketed prompt length: the next power of two up to `multiple`, then the next multiple of it."""
    if length <= multiple:
        return max(minimum, 1 << max(0, int(length) - 1).bit_length())
    return -(-int(length) // multiple) * multiple


def pad_prompts(tokens, mask, length: int, pad_id: int = 0):
    """Left-pad tokens [B, P] / mask [B, P] to [B, length] with pad_id and mask False."""
    extra = length - tokens.shape[1]
    if extra < 0:
        raise ValueError(f"prompts of length {tokens.shape[1]} do not fit in {length}")
    if extra == 0:
        return tokens, mask
    xp = np if isinstance(tokens, np.ndarray) and isinstance(mask, np.ndarray) else jnp
    tokens = xp.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id)
    mask = xp.pad(mask, ((0, 0), (extra, 0)), constant_values=False)
    return tokens, mask


def row_keys(rng: jax.Array, rows: int) -> jax.Array:
    """One typed PRNG key per row: `rng` folded with the row index (or `rng` itself if already [rows])."""
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(jnp.asarray(rng, jnp.uint32))
    if rng.shape == ():
        return jax.vmap(jax.random.fold_in, (None, 0))(rng, jnp.arange(rows, dtype=jnp.uint32))
    if rng.shape == (rows,):
        return rng
    raise ValueError(f"rng must be one key or one key per output row ({rows}), got key shape {rng.shape}")


def argmax(x: jax.Array) -> jax.Array:
    """First index of the maximum over the last axis, int32 (two plain reductions: several times
    faster on XLA:CPU than the variadic reduce of `jnp.argmax`)."""
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1).astype(jnp.int32)


def _top_p_threshold(probs: jax.Array, top_p: float) -> jax.Array:
    """Per row, the largest probability value c such that the tokens with p >= c hold mass >= top_p.

    Exact bisection over the float bit patterns (non-negative floats order like their int32 bits):
    31 masked sums instead of sorting the vocabulary (a sort of [16, 49152] costs ~150 ms on CPU).
    """
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    lo = jnp.zeros(probs.shape[:-1], jnp.int32)  # mass(p >= lo) = 1 >= top_p
    hi = jnp.max(bits, axis=-1) + 1  # mass(p >= hi) = 0 < top_p

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        mass = jnp.sum(jnp.where(bits >= mid[..., None], probs, 0.0), axis=-1)
        ok = mass >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, step, (lo, hi))
    return lo


def filter_logits(scaled: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Top-k, then top-p (nucleus, HF semantics) filtering of [B, V] logits: removed entries -> -inf.

    Top-p keeps the smallest set of most likely tokens whose probability sums to >= top_p (always at
    least one); tokens tied with the last kept one are kept too.
    """
    vocab = scaled.shape[-1]
    top_k = min(int(top_k), vocab)
    neg_inf = jnp.array(-jnp.inf, scaled.dtype)
    if 0 < top_k < vocab:
        top_values = jax.lax.top_k(scaled, top_k)[0]  # [B, k], descending
        scaled = jnp.where(scaled < top_values[:, -1:], neg_inf, scaled)
        if top_p < 1.0:  # the nucleus lies inside the top k: work on the k sorted values
            probs = jax.nn.softmax(top_values, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better tokens
            keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
            cutoff = jnp.take_along_axis(top_values, keep - 1, axis=-1)
            scaled = jnp.where(scaled < cutoff, neg_inf, scaled)
    elif top_p < 1.0:
        probs = jax.nn.softmax(scaled, axis=-1)
        threshold = _top_p_threshold(probs, top_p)
        keep = jax.lax.bitcast_convert_type(probs, jnp.int32) >= threshold[..., None]
        scaled = jnp.where(keep, scaled, neg_inf)
    return scaled


def sample_logits(logits: jax.Array, keys: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0):
    """Draw one token per row from logits float [B, V] with keys [B]: (tokens int32 [B], logprobs f32 [B]).

    The draw inverts the filtered distribution's CDF at one uniform number per row: exact, and on
    CPU far cheaper than Gumbel noise for every vocabulary entry (`jax.random.categorical`).
    """
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        tokens = argmax(logits)
        logprobs = jax.nn.log_softmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        logprobs = jax.nn.log_softmax(scaled, axis=-1)
        cdf = jnp.cumsum(jax.nn.softmax(filter_logits(scaled, top_k, top_p), axis=-1), axis=-1)
        # u in (0, 1]: the first entry whose CDF reaches u * total has positive probability.
        u = 1.0 - jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(keys)
        tokens = jnp.sum(cdf < (u * cdf[:, -1])[:, None], axis=-1, dtype=jnp.int32)
    return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]


# Streaming: the compiled loop calls `_stream_dispatch` through `jax.debug.callback` (on an XLA
# thread); the Python callable lives here, not in the jit's static arguments, so a new callable
# does not recompile. One streaming call at a time (the lock).
_STREAM_LOCK = threading.Lock()
_STREAM_CALLBACK: list = [None]


def _stream_dispatch(step, tokens, active):
    if _STREAM_CALLBACK[0] is not None:
        callback, rows = _STREAM_CALLBACK[0]
        callback(int(step), np.asarray(tokens)[:rows], np.asarray(active)[:rows])


def _cast_params(params, dtype):
    """Floating parameters to the compute dtype once, outside the decode loop (the scalar head stays f32)."""
    def cast(path, x):
        if any(getattr(k, "key", None) == "score_head" for k in path):
            return x
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree_util.tree_map_with_path(cast, params)


def _constrain(x, mesh, spec):
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _constrain_cache(cache: KVCache, mesh, batch_axes) -> KVCache:
    if mesh is None:
        return cache
    rows = PartitionSpec(batch_axes)
    kv = lambda x: _constrain(x, mesh, rows if x.ndim == 4 else PartitionSpec(None, batch_axes))  # per layer / stacked
    return cache.replace(k=jax.tree.map(kv, cache.k), v=jax.tree.map(kv, cache.v),
                         mask=_constrain(cache.mask, mesh, rows), positions=_constrain(cache.positions, mesh, rows),
                         next_position=_constrain(cache.next_position, mesh, rows))


def _prefill(cfg, head, params, tokens, mask, max_len, cache_dtype, mesh, batch_axes):
    """Prompts into a fresh cache; the head output at the last prompt index only: ([R, ...], cache)."""
    cache = _constrain_cache(init_cache(cfg, tokens.shape[0], max_len, dtype=cache_dtype), mesh, batch_axes)
    last = jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1, jnp.int32)
    out, cache = Transformer(cfg, head=head).apply({"params": params}, tokens, attention_mask=mask, cache=cache,
                                                   output_positions=last)
    return out[:, 0], _constrain_cache(cache, mesh, batch_axes)


def _repeat_rows(tree, n: int):
    """Each row of a prefill's outputs or cache repeated n times (prompt-major), along the batch axis
    (axis 1 of layer-stacked [L, B, ...] cache arrays, axis 0 otherwise; scalars are shared)."""
    def repeat(x):
        if not x.ndim:  # shared scalars (the cache's write index)
            return x
        return jnp.repeat(x, n, axis=1 if x.ndim == 5 else 0)
    return jax.tree.map(repeat, tree)


def _decode(cfg, head, params, tokens, cache, mesh, batch_axes):
    out, cache = Transformer(cfg, head=head).apply({"params": params}, tokens[:, None], cache=cache)
    return out[:, 0], _constrain_cache(cache, mesh, batch_axes)


@functools.partial(jax.jit, static_argnames=("cfg", "value_cfg", "settings", "mesh"))
def _generate_jit(params, prompt_tokens, prompt_mask, keys, stop_ids, row_valid, value_params, *, cfg: ModelConfig,
                  value_cfg: Optional[ModelConfig], settings: _Settings, mesh: Optional[Mesh]):
    s = settings
    axes = s.batch_axes
    rows_spec = PartitionSpec(axes)
    num_rows, prompt_len = prompt_tokens.shape
    n_new = s.max_new_tokens
    max_len = prompt_len + n_new - 1
    dtype = jnp.dtype(s.dtype)
    cfg = cfg.replace(dtype=s.dtype)
    params = _cast_params(params, dtype)
    prompt_tokens = _constrain(prompt_tokens, mesh, rows_spec)
    prompt_mask = _constrain(prompt_mask, mesh, rows_spec)
    n = s.samples_per_prompt

    def prefill(cfg, head, params):
        out, cache = _prefill(cfg, head, params, prompt_tokens, prompt_mask, max_len, s.cache_dtype, mesh, axes)
        if n > 1:
            out, cache = _repeat_rows((out, cache), n)
        return _constrain(out, mesh, rows_spec), _constrain_cache(cache, mesh, axes)

    logits, cache = prefill(cfg, "lm", params)
    with_values = value_cfg is not None
    if with_values:
        value_cfg = value_cfg.replace(dtype=s.dtype)
        value_params = _cast_params(value_params, dtype)
        value, value_cache = prefill(value_cfg, "scalar", value_params)
    if n > 1:
        prompt_tokens, prompt_mask = _repeat_rows((prompt_tokens, prompt_mask), n)
        num_rows *= n
    if not with_values:
        value, value_cache = jnp.zeros((num_rows,), jnp.float32), None

    stops = jnp.asarray(s.eos_ids, jnp.int32)

    def is_stop(token):
        if s.ignore_eos:
            return jnp.zeros(token.shape, bool)
        hit = jnp.any(token[:, None] == stops[None, :], axis=-1) if len(s.eos_ids) else jnp.zeros(token.shape, bool)
        if stop_ids is not None:
            hit |= jnp.any(token[:, None] == stop_ids, axis=-1)
        return hit

    def sample_into(t, logits, value, state):
        tokens, mask, logprobs, values, done = state
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, t)
        token, logprob = sample_logits(logits, step_keys, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        active = ~done
        token = jnp.where(active, token, s.pad_id)
        if s.stream:
            jax.debug.callback(_stream_dispatch, t, token, active, ordered=True)
        col = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None].astype(buf.dtype), t, axis=1)
        state = (col(tokens, token), col(mask, active), col(logprobs, jnp.where(active, logprob, 0.0)),
                 col(values, jnp.where(active, value, 0.0)), done | (active & is_stop(token)))
        return token, state

    zeros = lambda dt: _constrain(jnp.zeros((num_rows, n_new), dt), mesh, rows_spec)
    state = (zeros(jnp.int32), zeros(bool), zeros(jnp.float32), zeros(jnp.float32),
             _constrain(~row_valid, mesh, rows_spec))  # padding rows start (and stay) ended
    token, state = sample_into(jnp.int32(0), logits, value, state)

    def cond(carry):
        t, _, _, _, state = carry
        return (t < n_new) & ~jnp.all(state[-1])

    def body(carry):
        t, token, cache, value_cache, state = carry
        logits, cache = _decode(cfg, "lm", params, token, cache, mesh, axes)
        value = jnp.zeros((num_rows,), jnp.float32)
        if with_values:
            value, value_cache = _decode(value_cfg, "scalar", value_params, token, value_cache, mesh, axes)
        token, state = sample_into(t, logits, value, state)
        return t + 1, token, cache, value_cache, state

    t, _, _, _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), token, cache, value_cache, state))
    tokens, mask, logprobs, values, ended = state
    out = SampleOutput(tokens=tokens, mask=mask, logprobs=logprobs, ended=ended, num_steps=t,
                       prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, values=values if with_values else None)
    return jax.tree.map(lambda x: _constrain(x, mesh, PartitionSpec() if x.ndim == 0 else rows_spec), out)


def _place(tree, mesh: Mesh):
    """Leaves not already on `mesh` are replicated onto it (params already sharded there are kept, and so
    are traced ones: inside a caller's jit, as the memory planner lowers `generate`, its shardings decide)."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(x):
        if isinstance(x, jax.core.Tracer):
            return x
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated)
    return jax.tree.map(place, tree)


def default_cache_dtype(dtype, platform: str) -> str:
    """The compute dtype, except f32 for a bf16/f16 model on CPU: XLA:CPU updates a 16-bit cache by
    converting all of it to f32 and back in every layer, which makes decoding several times slower."""
    dtype = jnp.dtype(dtype)
    if platform == "cpu" and dtype.itemsize < 4:
        return "float32"
    return str(dtype)


def _normalise_eos(eos_id) -> tuple:
    if eos_id is None:
        return ()
    if isinstance(eos_id, (int, np.integer)):
        return (int(eos_id),)
    return tuple(int(i) for i in eos_id)


def _check_prompts(cfg: ModelConfig, prompt_mask: jax.Array, max_new_tokens: int) -> None:
    """Left padding with a real last token, and room for the response under a learned-position model's
    max_len; reduced on the devices (a mask spanning several processes is gathered only to name bad rows)."""
    if not bool(jnp.all(prompt_mask[:, -1])):
        bad = np.flatnonzero(~host_values(prompt_mask[:, -1])).tolist()
        raise ValueError(f"prompts must be left-padded with a real last token; rows {bad} are not")
    if cfg.position == "learned":
        longest = int(jnp.max(jnp.sum(prompt_mask, axis=1)))
        if longest + max_new_tokens > cfg.max_len:
            raise ValueError(f"prompt length {longest} + max_new_tokens {max_new_tokens} exceeds "
                             f"the model's max_len {cfg.max_len}")


def generate(cfg: ModelConfig, params, prompt_tokens, prompt_mask, *, rng: jax.Array, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: Union[None, int, Sequence[int]] = None, stop_ids=None, pad_id: int = 0, n: int = 1,
             ignore_eos: bool = False, dtype: Optional[str] = None, cache_dtype: Optional[str] = None,
             prompt_bucket: Optional[int] = 64,
             value_params=None, value_cfg: Optional[ModelConfig] = None, mesh: Optional[Mesh] = None,
             batch_axes: Optional[Sequence[str]] = None,
             stream: Optional[Callable[[int, np.ndarray, np.ndarray], None]] = None) -> SampleOutput:
    """Sample up to `max_new_tokens` tokens after each left-padded prompt, in one compiled loop.

    prompt_tokens int32 [B, P] left-padded, prompt_mask bool [B, P] (True = real token; the last
    column must be real). `rng`: one key (folded with each output row's index, so a row's sample
    depends only on the seed, its row index and its prompt) or one key per output row [B * n].
    `eos_id`: an id or a sequence of ids that end a row; `stop_ids` int [B, S] per-prompt extra stop
    ids (pad with -1). Tokens after a row's stop token are `pad_id` and masked. `n` samples per
    prompt give B * n rows, prompt-major. `ignore_eos` forces all `max_new_tokens` (benchmarks).
    `dtype` overrides the compute dtype (params are cast once per call, e.g. "bfloat16": decoding
    is bound by reading the weights each step); `cache_dtype` sets the KV cache's, which attention
    also runs in (None: `default_cache_dtype`). `prompt_bucket`: prompts are left-padded to
    `bucket_length(P, prompt_bucket)` to limit recompiles (None: no padding).
    `value_params` (+ `value_cfg`, default `cfg`): a head="scalar" model run alongside with its own
    cache; `values[:, t]` is its output at the state before token t (docs/formulas.md#token-alignment).
    `mesh`: rows are sharded over `batch_axes` of the mesh (default: the axes of
    `parallel.BATCH_AXES` = ('data', 'fsdp') that the mesh has); params not already on the mesh
    are replicated, params sharded on it keep their sharding; rows must divide evenly.
    `stream(step, tokens [R], active [R])` is called from inside the compiled loop after each
    token column (single device only).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k} top_p={top_p}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if stream is not None and mesh is not None:
        raise ValueError("stream= is only supported without a mesh")
    if prompt_tokens.ndim != 2 or prompt_tokens.shape != prompt_mask.shape:
        raise ValueError(f"prompt_tokens {prompt_tokens.shape} and prompt_mask {prompt_mask.shape} must both be [B, P]")
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    prompt_mask = jnp.asarray(prompt_mask, bool)
    if not isinstance(prompt_mask, jax.core.Tracer):
        _check_prompts(cfg, prompt_mask, max_new_tokens)
    if prompt_bucket:
        prompt_tokens, prompt_mask = pad_prompts(prompt_tokens, prompt_mask,
                                                 bucket_length(prompt_tokens.shape[1], prompt_bucket), pad_id)
    if stop_ids is not None:
        stop_ids = jnp.asarray(stop_ids, jnp.int32)
        if stop_ids.ndim != 2 or stop_ids.shape[0] != prompt_tokens.shape[0]:
            raise ValueError(f"stop_ids must be [B={prompt_tokens.shape[0]}, S], got {stop_ids.shape}")
    num_prompts = prompt_tokens.shape[0]
    num_rows = num_prompts * n
    keys = row_keys(rng, num_rows)
    row_valid = jnp.ones((num_rows,), bool)
    if value_params is not None:
        value_cfg = value_cfg or cfg
    else:
        value_cfg = None
    if batch_axes is None:
        batch_axes = tuple(a for a in BATCH_AXES if mesh is not None and a in mesh.axis_names)
    batch_axes = tuple(batch_axes)
    shards = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in batch_axes]))
    # n samples of a prompt share its prefill (the cache is repeated inside the jit) when the prompts
    # split evenly over the mesh; otherwise the prompts are repeated first.
    prefill_once = n > 1 and num_prompts % shards == 0
    if n > 1 and not prefill_once:
        prompt_tokens, prompt_mask = jnp.repeat(prompt_tokens, n, 0), jnp.repeat(prompt_mask, n, 0)
    if n > 1 and stop_ids is not None:
        stop_ids = jnp.repeat(stop_ids, n, 0)
    if mesh is not None:
        if num_rows % shards:
            raise ValueError(f"{num_rows} rows do not divide over mesh axes {batch_axes} of size {shards}")
        rows = NamedSharding(mesh, PartitionSpec(batch_axes))
        prompt_tokens, prompt_mask, row_valid = (jax.device_put(x, rows)
                                                 for x in (prompt_tokens, prompt_mask, row_valid))
        # as raw data: device_put takes a process-local array onto devices of several processes, a key array not
        keys = jax.random.wrap_key_data(jax.device_put(jax.random.key_data(keys), rows), impl=jax.random.key_impl(keys))
        if stop_ids is not None:
            stop_ids = jax.device_put(stop_ids, rows)
        params = _place(params, mesh)
        value_params = None if value_params is None else _place(value_params, mesh)
    dtype = str(jnp.dtype(dtype or cfg.dtype))
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    if cache_dtype is None:
        cache_dtype = default_cache_dtype(dtype, platform)
    padded_rows = 0
    if mesh is None and num_rows == 1 and platform == "cpu" and jnp.dtype(dtype).itemsize < 4:
        # XLA:CPU has no 16-bit matrix-vector kernel: with one row it converts every weight to f32
        # in every step (6x slower); with a second (ended, discarded) row it runs bf16 matmuls.
        padded_rows = 1
        prompt_tokens, prompt_mask, keys = (jnp.concatenate([x, x[:1]]) for x in (prompt_tokens, prompt_mask, keys))
        stop_ids = None if stop_ids is None else jnp.concatenate([stop_ids, stop_ids[:1]])
        row_valid = jnp.array([True, False])
    settings = _Settings(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                         top_p=float(top_p), eos_ids=_normalise_eos(eos_id), pad_id=int(pad_id),
                         ignore_eos=bool(ignore_eos), dtype=dtype, cache_dtype=str(jnp.dtype(cache_dtype)),
                         batch_axes=batch_axes, stream=stream is not None,
                         samples_per_prompt=n if prefill_once else 1)
    call = functools.partial(_generate_jit, params, prompt_tokens, prompt_mask, keys, stop_ids, row_valid,
                             value_params, cfg=cfg, value_cfg=value_cfg, settings=settings, mesh=mesh)
    if padded_rows:
        unpadded = call
        call = lambda: jax.tree.map(lambda x: x[:num_rows] if x.ndim else x, unpadded())
    if stream is None:
        return call()
    with _STREAM_LOCK:
        _STREAM_CALLBACK[0] = (stream, num_rows)
        try:
            out = call()
            jax.block_until_ready(out)
            jax.effects_barrier()
        finally:
            _STREAM_CALLBACK[0] = None
    return out
