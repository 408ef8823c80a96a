"""What every trainer does the same way before and around its own step: the run's start (distributed
init, config checks, mesh, workdir with config.json and inputs.json, rules, seed keys), the layout of
a train state over the mesh, and the loop call that closes the train iterator.

    run = setup.start(config, workdir, num_keys=3)
    init_rng, train_rng, sample_rng = run.keys
    ...
    layout = setup.train_state_layout(tx, params, cfg, run.mesh, run.rules)
    return setup.run_loop(run, num_steps, step_fn=step_lib.compile_step(step, layout.state_shardings, ...),
                          init_state=lambda: layout.init(params), abstract_state=layout.abstract_state,
                          train_iterator=iter(loader), rng=train_rng, ...)
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Union

import jax
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from instructjax import parallel
from instructjax.train import loop
from instructjax.train import step as step_lib
from instructjax.train.config import check_values
from instructjax.train.fingerprint import fingerprint
from instructjax.train.inputs import check_batch_size
from instructjax.train.state import TrainState, abstract_state, init_state, state_shardings
from instructjax.train.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Run:
    """A started run: its config, workdir, mesh, logical-axis rules and the keys split from `config.seed`."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    mesh: Mesh
    rules: tuple
    keys: tuple  # jax.random.split(jax.random.key(config.seed), num_keys), in order
    inputs: dict  # the input files' fingerprints (`fingerprint.fingerprint(config)`, as in WORKDIR/inputs.json)


def start(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike], num_keys: int,
          check_mesh: Optional[Callable[[Mesh], None]] = None) -> Run:
    """Initialise JAX's distributed runtime (multi-host); check the config (`config.check_values`, the mesh
    against the devices, `check_mesh(mesh)`: the trainer's batch sizes, by default `config.batch_size` in
    `config.microbatches` over the mesh) and hash its input files (`fingerprint`); only then write (or
    check) WORKDIR/config.json and inputs.json (`Workdir.write_config`; a workdir without a checkpoint
    is rewritten); split `config.seed` into `num_keys` keys."""
    p = config.parallel
    parallel.initialize_distributed(p.multi_host, p.coordinator_address, p.num_processes, p.process_id)
    check_values(config)
    try:
        mesh = parallel.make_mesh(config.parallel.mesh_shape)
    except ValueError as e:
        raise ValueError(f"--config.parallel.mesh_shape: {e}") from None
    if check_mesh is None:
        check_batch_size(config.batch_size, config.microbatches, mesh)
    else:
        check_mesh(mesh)
    started = time.perf_counter()
    inputs = fingerprint(config)
    logging.info("inputs: %d files, %.1f MB hashed in %.1f s", len(inputs),
                 sum(v["size"] for v in inputs.values()) / 1e6, time.perf_counter() - started)
    workdir = Workdir.at(workdir)
    workdir.write_config(config, inputs, locked=workdir.has_checkpoint())
    keys = tuple(jax.random.split(jax.random.key(config.seed), num_keys))
    return Run(config=config, workdir=workdir, mesh=mesh, rules=tuple(config.parallel.rules), keys=keys,
               inputs=inputs)


def check_no_dropout(config: ml_collections.ConfigDict, reason: str, key: str = "config.model") -> None:
    """A ValueError when `config.model` or the LoRA adapters (`config.lora`) have dropout on, for a trainer
    whose forwards all run without it."""
    if config.model.dropout_rate or config.model.attention_dropout:
        raise ValueError(f"{key}.dropout_rate / attention_dropout: {reason} (docs/formulas.md#dropout-off); "
                         "set them to 0")
    if config.lora.rank and config.lora.dropout:
        raise ValueError(f"--config.lora.dropout={config.lora.dropout}: {reason} (docs/formulas.md#dropout-off); "
                         "set it to 0")


def param_shapes(params: Any) -> Any:
    """`ShapeDtypeStruct`s of a params tree."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """A `TrainState` of `tx` over a mesh: param shapes, param and state shardings, the checkpoint's
    restore target (`abstract_state`)."""

    tx: optax.GradientTransformation
    shapes: Any
    param_shardings: Any
    state_shardings: TrainState
    abstract_state: TrainState

    def init(self, params: Any) -> TrainState:
        """A fresh state of `params` laid out over the mesh."""
        return init_state(params, self.tx, self.state_shardings)


def train_state_layout(tx: optax.GradientTransformation, params: Any, cfg: Any, mesh: Mesh, rules, *,
                       head: str = "lm", param_shardings: Optional[Any] = None) -> StateLayout:
    """The layout of a train state of `params` (arrays or shapes) and `tx`; the params are sharded by
    the logical axes of `cfg` with the `head` ("lm" or "scalar") unless `param_shardings` are given."""
    shapes = param_shapes(params)
    if param_shardings is None:
        param_shardings = parallel.param_shardings(cfg, shapes, mesh, rules, head=head)
    shardings = state_shardings(tx, shapes, param_shardings, mesh)
    return StateLayout(tx=tx, shapes=shapes, param_shardings=param_shardings, state_shardings=shardings,
                       abstract_state=abstract_state(tx, shapes, shardings))


def check_validation_split(splits) -> None:
    """Evaluation (config.eval.every_steps > 0) needs a validation split among the dataset's `splits`."""
    if "validation" not in splits:
        raise ValueError("config.eval.every_steps > 0 needs a validation split: set data.validation_files "
                         "or data.validation_fraction")


def compile_eval_sums(loss_fn: step_lib.LossFn, param_shardings: Any, mesh: Mesh) -> Callable:
    """`jax.jit` of `loss_fn(params, batch, key(0))` for evaluation (the loss without dropout: the key is
    unused): params laid out by `param_shardings`, the batch over the batch axes, the result replicated."""
    return jax.jit(lambda params, batch: loss_fn(params, batch, jax.random.key(0)),
                   in_shardings=(param_shardings, step_lib.batch_sharding(mesh)),
                   out_shardings=parallel.replicated(mesh))


def host_outputs(fn: Callable, params: Any, loader, mesh: Mesh, rules, num_batches: int = 0) -> list:
    """Host copies of `fn(params, batch)` over one pass of `loader` (its first `num_batches`; 0: all)."""
    outputs, it = [], iter(loader)
    try:
        with parallel.activation_sharding(mesh, rules):
            for i, batch in enumerate(it):
                if num_batches and i == num_batches:
                    break
                outputs.append(jax.device_get(fn(params, batch)))
    finally:
        it.close()
    return outputs


def run_loop(run: Run, num_steps: int, *, step_fn: Callable, init_state: Callable[[], Any], abstract_state: Any,
             train_iterator, rng: jax.Array, eval_fn: Optional[Callable], export_fn: Optional[Callable],
             name: str) -> Any:
    """`loop.run` with the loop settings of `run.config`; the train iterator is closed at the end."""
    try:
        return loop.run(loop.LoopConfig.from_config(run.config, num_steps), run.workdir, step_fn=step_fn,
                        init_state=init_state, abstract_state=abstract_state, train_iterator=train_iterator,
                        rng=rng, eval_fn=eval_fn, export_fn=export_fn, name=name)
    finally:
        train_iterator.close()
