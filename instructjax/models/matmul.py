"""Mixed-precision contractions: operands in the compute dtype, float32 accumulation, forward and backward.

XLA:CPU runs a bf16 x bf16 matmul fast only when it accumulates in float32. Autodiff of such a
matmul feeds the float32 cotangent of its result into the backward matmuls, which then run in
float32 (about 4x slower). `contract` casts that cotangent to the compute dtype instead, as torch
autocast does, so both backward matmuls are bf16 x bf16 with float32 accumulation too.

A contraction of an operand's trailing indices with a weight (no index in all three terms, as in every
projection and the LM head) runs as one 2-d matmul over the merged leading indices ([tokens, in] x
[in, out]). Its weight gradient then contracts a single index that both operands hold first, which
XLA:CPU's matmul reads as a transposed operand; contracted over [batch, length] instead, XLA
transposes a copy of the activations for every weight gradient (a fifth of an RL update's op time,
docs/benchmarks.md).

Every result is tagged with `checkpoint_name` (`BATCHED_CONTRACTION` when an index is in all three
terms, as in attention, else `CONTRACTION`): the remat policies save contractions by these names,
since a custom-gradient matmul is no `dot_general` to `jax.checkpoint_policies.checkpoint_dots`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

CONTRACTION, BATCHED_CONTRACTION = "contraction", "batched_contraction"


def contract(spec: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """`einsum(spec, x, w)` of both operands cast to `dtype`, accumulated and returned in float32.

    In float32 it is the plain einsum. Below float32 the gradients are computed from the cotangent
    cast to `dtype`, accumulated in float32 and returned in the dtypes of `x` and `w` (float32
    master weights get float32 gradients). Every index of `spec` must appear in two of its three terms.
    """
    dtype = jnp.dtype(dtype)
    x_spec, w_spec, out_spec = _terms(spec)
    matrix = _matrix_form(x_spec, w_spec, out_spec)
    if matrix is None:
        out = _einsum_in(spec, x, w, dtype)
    else:
        matrix_spec, rows = matrix
        cols_shape = tuple(w.shape[w_spec.index(i)] for i in out_spec[rows:])
        x2 = x.reshape(math.prod(x.shape[:rows]), -1)
        w2 = w.reshape(x2.shape[1], -1) if matrix_spec == "nk,km->nm" else w.reshape(-1, x2.shape[1])
        out = _einsum_in(matrix_spec, x2, w2, dtype).reshape(x.shape[:rows] + cols_shape)
    return checkpoint_name(out, BATCHED_CONTRACTION if set(x_spec) & set(w_spec) & set(out_spec) else CONTRACTION)


def _einsum_in(spec, x, w, dtype):
    """The einsum in `dtype`: plain in float32, with the mixed-precision gradient below it."""
    return _einsum(spec, x, w, dtype) if dtype == jnp.float32 else _mixed_einsum(spec, dtype, x, w)


def _matrix_form(x_spec: str, w_spec: str, out_spec: str) -> tuple[str, int] | None:
    """(the 2-d spec "nk,km->nm" or "nk,mk->nm", the number of row indices) of a contraction whose x is
    [rows..., contracted...], w [contracted..., cols...] or [cols..., contracted...] (the contracted
    indices in x's order) and out [rows..., cols...], at least one index in each block; else None
    (batch indices, other orders)."""
    contracted = "".join(i for i in x_spec if i in w_spec)
    rows = x_spec[:len(x_spec) - len(contracted)]
    cols = out_spec[len(rows):]
    if not (rows and cols and contracted) or x_spec != rows + contracted or out_spec != rows + cols:
        return None
    matrix_spec = {contracted + cols: "nk,km->nm", cols + contracted: "nk,mk->nm"}.get(w_spec)
    return None if matrix_spec is None else (matrix_spec, len(rows))


def _terms(spec: str) -> tuple[str, str, str]:
    operands, out_spec = spec.split("->")
    x_spec, w_spec = operands.split(",")
    return x_spec, w_spec, out_spec


def _einsum(spec, x, w, dtype):
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_einsum(spec, dtype, x, w):
    return _einsum(spec, x, w, dtype)


def _mixed_einsum_fwd(spec, dtype, x, w):
    return _einsum(spec, x, w, dtype), (x, w)


def _mixed_einsum_bwd(spec, dtype, residuals, g):
    x, w = residuals
    x_spec, w_spec, out_spec = _terms(spec)
    dx = _einsum(f"{out_spec},{w_spec}->{x_spec}", g, w, dtype)
    dw = _einsum(f"{x_spec},{out_spec}->{w_spec}", x, g, dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)
