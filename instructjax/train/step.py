"""The generic train step: weighted loss sums, gradient accumulation over microbatches in a
`lax.scan`, one optax update; compiled with explicit shardings and a donated state.

A trainer supplies a loss function `loss_fn(params, batch, rng) -> (loss_sum, aux)` that returns
its loss *summed* over its units (tokens for SFT, prompts for the reward model) and
`aux = {"weight": number of units, "totals": {name: summed count}}`. The step's loss is
`sum(loss_sum) / sum(weight)` over all microbatches, so accumulation over microbatches gives the
same gradient as one pass over the full batch (up to float summation order).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from instructjax import parallel
from instructjax.train.state import TrainState, trainable, with_trainable

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
StepFn = Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]


def split_microbatches(batch: dict, num_microbatches: int) -> dict:
    """[B, ...] -> [M, B / M, ...]; microbatch m holds rows m, M + m, 2M + m, ... so that each
    device's rows split locally (the batch axis stays sharded, no data moves)."""
    def split(x: jax.Array) -> jax.Array:
        rows = x.shape[0]
        if rows % num_microbatches:
            raise ValueError(f"batch of {rows} rows does not split into {num_microbatches} microbatches")
        x = jnp.swapaxes(x.reshape(rows // num_microbatches, num_microbatches, *x.shape[1:]), 0, 1)
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn: LossFn, params: Any, batch: dict, rng: Optional[jax.Array],
                         num_microbatches: int) -> tuple[Any, jax.Array, Any]:
    """(gradient of the summed loss, summed loss, summed aux) over `num_microbatches` microbatches;
    each microbatch gets its own key split from `rng` (None: `loss_fn` is called with None). The
    gradient is a `trainable(params)` tree: the base weights of a LoRA model are constants."""
    def value_and_grad(micro: dict, key: jax.Array):
        def loss(part):
            return loss_fn(with_trainable(params, part), micro, key)

        (loss_sum, aux), grads = jax.value_and_grad(loss, has_aux=True)(trainable(params))
        return grads, loss_sum, aux

    if num_microbatches == 1:
        return value_and_grad(batch, rng)
    micro = split_microbatches(batch, num_microbatches)
    keys = None if rng is None else jax.random.split(rng, num_microbatches)

    def body(carry, xs):
        grads, loss_sum, aux = value_and_grad(*xs)
        return jax.tree.map(jnp.add, carry, (grads, loss_sum, aux)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(value_and_grad, first, None if keys is None else keys[0]))
    (grads, loss_sum, aux), _ = jax.lax.scan(body, zeros, (micro, keys))
    return grads, loss_sum, aux


def poisoned_at(loss_fn: Callable[..., tuple[jax.Array, Any]], nan_at_step: int,
                step: jax.Array) -> Callable[..., tuple[jax.Array, Any]]:
    """The test hook `debug.nan_at_step`: `loss_fn` (returning (loss, aux)) with its loss multiplied by NaN
    when `step` (1-based, traced) is `nan_at_step`, so the loss and every gradient are NaN; -1: `loss_fn`."""
    if nan_at_step < 0:
        return loss_fn

    def poisoned(*args):
        loss, aux = loss_fn(*args)
        return loss * jnp.where(step == nan_at_step, jnp.nan, 1.0), aux

    return poisoned


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, num_microbatches: int = 1,
                    schedule: optax.Schedule | None = None, nan_at_step: int = -1) -> StepFn:
    """A pure `step(state, batch, rng) -> (state, metrics)`.

    metrics: `loss` (sum / weight), `grad_norm` (global norm before clipping), `lr` (when
    `schedule` is given) and every entry of `aux["totals"]` summed over the batch.
    `nan_at_step` (a test hook; -1 = off): the loss of that step (1-based) is multiplied by NaN.
    """
    def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        this_step = state.step + 1
        fn = poisoned_at(loss_fn, nan_at_step, this_step)
        grads, loss_sum, aux = accumulate_gradients(fn, state.params, batch, rng, num_microbatches)
        weight = jnp.maximum(aux["weight"].astype(jnp.float32), 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        metrics = {"loss": loss_sum / weight, "grad_norm": optax.global_norm(grads), **aux["totals"]}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return apply_gradients(state, grads, tx), metrics

    return step


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation) -> TrainState:
    """One optax update of a `TrainState` from the gradient of its `trainable` params: those params and
    the optimizer state updated, step + 1."""
    part = trainable(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, part)
    return TrainState(step=state.step + 1, params=with_trainable(state.params, optax.apply_updates(part, updates)),
                      opt_state=opt_state)


def with_derived_metrics(step: StepFn, derive: Callable[[dict], dict], drop: Sequence[str] = ()) -> StepFn:
    """The step with `derive(metrics)` added to its metrics (ratios of its summed counts: accuracy,
    means) and the `drop` entries (sums only `derive` needs) removed."""
    def wrapped(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        state, metrics = step(state, batch, rng)
        metrics.update(derive(metrics))
        for name in drop:
            del metrics[name]
        return state, metrics
    return wrapped


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Every leaf of a batch split over the mesh's batch axes on its leading dim."""
    return NamedSharding(mesh, P(parallel.BATCH_AXES))


def jit_step(step: StepFn, state_shardings: TrainState, mesh: Mesh) -> Any:
    """`jax.jit` of `step` with explicit in/out shardings and the state donated (trace it under
    `parallel.activation_sharding`; the memory planner lowers it on abstract arrays)."""
    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding(mesh), replicated),
                   out_shardings=(state_shardings, replicated), donate_argnums=0)


def compile_step(step: StepFn, state_shardings: TrainState, mesh: Mesh,
                 rules=parallel.DEFAULT_RULES) -> StepFn:
    """`jit_step` of `step`, traced under the mesh and its logical-axis rules."""
    jitted = jit_step(step, state_shardings, mesh)

    def call(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        with parallel.activation_sharding(mesh, rules):
            return jitted(state, batch, rng)

    return call
