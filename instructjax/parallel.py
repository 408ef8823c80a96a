"""One device mesh with axes ('data', 'fsdp', 'tensor'), logical-axis rules and shardings (GSPMD)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Sequence, TypeVar

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["DEFAULT_RULES", "batch_sharding"]  # the rest: `from instructjax.parallel import name`

T = TypeVar("T")
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name (see the model's parameters and activations) -> mesh axes.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("max_len", None),
    ("layers", None),
    ("act_batch", BATCH_AXES),
    ("act_length", None),
    ("act_embed", None),
)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """A mesh over all (or the given) devices; one -1 entry takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(mesh_shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh_shape={tuple(mesh_shape)} needs one size per axis {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape={tuple(mesh_shape)}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh_shape={tuple(mesh_shape)} does not cover the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def initialize_distributed(multi_host: bool, coordinator_address: str = "", num_processes: int = -1,
                           process_id: int = -1) -> None:
    """Join the multi-process job once per process (later calls do nothing). The coordinator's
    HOST:PORT, the process count and this process's id as given; "" / -1: detected from the cluster
    environment (TPU pods, SLURM, Open MPI). On CPU, processes exchange collectives over gloo.
    The errors name the `config.parallel` keys."""
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if not multi_host:
        given = [k for k, v in explicit.items() if v not in ("", -1)]
        if given:
            raise ValueError(f"config.parallel.{', '.join(given)} need config.parallel.multi_host=True")
        return
    if -1 not in (num_processes, process_id) and not 0 <= process_id < num_processes:
        raise ValueError(f"config.parallel.process_id={process_id} must be in 0..num_processes-1 "
                         f"(config.parallel.num_processes={num_processes})")
    if jax.distributed.is_initialized():
        return
    if not jax.config.jax_cpu_collectives_implementation:  # none: CPU arrays would not span processes
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address or None, None if num_processes == -1 else num_processes,
                               None if process_id == -1 else process_id)


def sync_processes(name: str) -> None:
    """Every process waits here until all have arrived (a barrier named `name`); one process: nothing."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def first_process_flag(flag: bool) -> bool:
    """Process 0's `flag`, the same answer in every process (for a decision that must not differ between
    them, such as whether a file exists while process 0 may be writing it); one process: `flag`."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def batches_over_processes(compute: Callable[[int], T], num_batches: int) -> Iterator[tuple[int, T]]:
    """(b, compute(b)) for b = 0 .. num_batches - 1 in order, the batches dealt round-robin over the processes:
    process p computes batches p, p + N, ... on its own devices and every process receives every batch's
    result (one allgather per round of N batches; `compute` returns numpy arrays of one shape for every b).
    A process with no batch left in the last round computes the last batch again (every process joins each
    gather). One process: compute(b) in turn, nothing gathered."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        yield from ((b, compute(b)) for b in range(num_batches))
        return
    for first in range(0, num_batches, count):
        gathered = multihost_utils.process_allgather(compute(min(first + index, num_batches - 1)))
        for i in range(min(count, num_batches - first)):
            yield first + i, jax.tree.map(lambda x: np.asarray(x[i]), gathered)


def host_values(tree):
    """Numpy copies of arrays: a global array spanning several processes gathered from all of them, any
    other (numpy, or on this process's devices only) copied as it is."""
    def value(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)
    return jax.tree.map(value, tree)


def _fit(spec: P, shape: tuple, mesh: Mesh) -> P:
    """Replicate dims whose size the mesh axes do not divide (e.g. 3 KV heads on tensor=2)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[n] for n in names)
        fitted.append(axes if size and dim % size == 0 else None)
    return P(*fitted)


def logical_shardings(logical_specs, shapes, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for a tree of logical PartitionSpecs and the matching tree of shapes/arrays."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, _fit(spec, np.shape(x), mesh)),
                        mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def param_shardings(cfg, params_or_shapes, mesh: Mesh, rules=DEFAULT_RULES, head: str = "lm"):
    """Shardings of a model's parameters from their logical axis names."""
    from instructjax.models import param_logical_axes
    return logical_shardings(param_logical_axes(cfg, head), params_or_shapes, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dim split over the data and fsdp axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
    """Number of pieces the batch axis is split into (the product of the batch mesh axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=DEFAULT_RULES):
    """Context for tracing sharded functions: the mesh and the logical-axis rules of activations."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
