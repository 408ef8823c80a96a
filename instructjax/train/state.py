"""The train state (step, params, optimizer state) as one pytree, and its shardings over a mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from instructjax import parallel
from instructjax.models import lora


@flax.struct.dataclass
class TrainState:
    """Everything a step updates; a checkpoint holds exactly this."""

    step: jax.Array  # int32 []: optimizer updates applied so far
    params: Any  # model parameters (the float32 master copy under mixed precision)
    opt_state: Any  # optax state of `tx`

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable(params)))


def trainable(tree: Any) -> Any:
    """The part of a params-shaped tree that training updates (the optimizer's params), None elsewhere:
    all of it, unless the params hold LoRA adapters; then only the adapters and a score head
    (`lora.trained_with_adapters`), so that no gradient or optimizer state exists for the base weights.
    A tuple of networks (PPO's policy and value network) is taken network by network."""
    if isinstance(tree, tuple):
        return tuple(trainable(network) for network in tree)
    if not lora.has_adapters(tree):
        return tree
    return jax.tree_util.tree_map_with_path(lambda path, x: x if lora.trained_with_adapters(path) else None, tree)


def with_trainable(params: Any, part: Any) -> Any:
    """`params` with the leaves of `part` (a `trainable` tree) in place of theirs."""
    return jax.tree.map(lambda p, t: p if t is None else t, params, part)


def _is_sharding(x: Any) -> bool:
    return isinstance(x, NamedSharding)


def state_shardings(tx: optax.GradientTransformation, params_shapes: Any, params_shardings: Any,
                    mesh: Mesh) -> TrainState:
    """Shardings of a `TrainState`: each copy of the params inside the optimizer state (Adam moments)
    is laid out like the params; counters and other small leaves are replicated."""
    opt_shapes = jax.eval_shape(tx.init, trainable(params_shapes))
    opt_shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, opt_shapes, trainable(params_shardings),
                                          transform_non_params=lambda _: parallel.replicated(mesh),
                                          is_leaf=_is_sharding)
    return TrainState(step=parallel.replicated(mesh), params=params_shardings, opt_state=opt_shardings)


def abstract_state(tx: optax.GradientTransformation, params_shapes: Any, shardings: TrainState) -> TrainState:
    """`ShapeDtypeStruct`s (with shardings) of the state: the restore target of a checkpoint."""
    shapes = jax.eval_shape(lambda p: TrainState.create(p, tx), params_shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_state(params: Any, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """A fresh state laid out over the mesh (params are placed first, the optimizer state built in place)."""
    params = jax.device_put(params, shardings.params)
    return jax.jit(lambda p: TrainState.create(p, tx), out_shardings=shardings)(params)
