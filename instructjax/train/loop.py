"""The training loop every trainer shares (SFT, reward model, PPO).

    state = loop.run(loop.LoopConfig.from_config(config, num_steps), workdir, step_fn=step,
                     init_state=lambda: init_state(params, tx, shardings), abstract_state=abstract,
                     train_iterator=iter(loader), rng=jax.random.key(config.seed),
                     eval_fn=evaluate, export_fn=export)

It resumes from the workdir's latest checkpoint (train state and data position), else starts from
`init_state()`; runs `step_fn(state, batch, fold_in(rng, step))` for steps start+1..num_steps;
logs metrics (metrics.jsonl, TensorBoard, a tqdm bar with loss, tokens/s and ETA); evaluates and
checkpoints every N steps and at the end; stops with `NonFiniteLossError` when a loss or gradient
norm is NaN/inf (that state is never saved), naming the last sane checkpoint; exports the final state.
A checkpoint that fails its checks on resume (checksums, finite state) is set aside for the one
before it. Step metrics are fetched one step late so that the host never waits for the device,
except on steps that log, evaluate or checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Optional

import grain
import jax
import ml_collections
import tqdm
from absl import logging

from instructjax import cpu_runtime
from instructjax.data.loader import format_tally
from instructjax.train.checkpointing import Checkpointer
from instructjax.train.metrics import MetricsWriter
from instructjax.train.optim import skipped_updates
from instructjax.train.state import TrainState
from instructjax.train.step import StepFn
from instructjax.train.workdir import Workdir

EvalFn = Callable[[TrainState, int], Mapping[str, float]]
GUARDED_METRICS = ("loss", "grad_norm", "policy_grad_norm", "value_grad_norm")  # the last two: PPO's


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN or infinite loss or gradient norm."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """When the loop logs, evaluates and checkpoints."""

    num_steps: int  # optimizer steps of the whole run
    log_every_steps: int = 1  # metrics.jsonl / TensorBoard interval
    eval_every_steps: int = 0  # evaluation interval (also after the last step); 0: never evaluate
    checkpoint_every_steps: int = 100  # checkpoint interval (also after the last step)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    async_checkpoints: bool = True  # write checkpoints in a background thread
    step_delay_s: float = 0.0  # test hook: sleep after each step (time to kill a run mid-way)
    skip_nonfinite: int = 0  # non-finite updates the optimizer may skip before the guard stops the run

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, num_steps: int) -> "LoopConfig":
        """From a trainer config's shared sections (see `instructjax.train.config.base_config`)."""
        return cls(num_steps=num_steps, log_every_steps=config.log_every_steps,
                   eval_every_steps=config.eval.every_steps,
                   checkpoint_every_steps=config.checkpoint.every_steps, keep_checkpoints=config.checkpoint.keep,
                   async_checkpoints=config.checkpoint.async_save, step_delay_s=config.debug.step_delay_s,
                   skip_nonfinite=config.optim.skip_nonfinite)

    def due(self, step: int, every: int) -> bool:
        return step == self.num_steps or (every > 0 and step % every == 0)


def data_stats(train_iterator) -> Optional[dict[str, int]]:
    """The records read, truncated and dropped so far by the train iterator: the `stats` of a `BatchIterator`
    or of one built on them (PPO's prompts and text); None for an iterator without."""
    return getattr(train_iterator, "stats", None)


class _Tracker:
    """Host side of the step metrics: NaN guard, progress bar, throughput, logging."""

    def __init__(self, config: LoopConfig, writer: MetricsWriter, start: int, name: str, train_iterator):
        self.config, self.writer, self.train_iterator = config, writer, train_iterator
        self.bar = tqdm.tqdm(total=config.num_steps, initial=start, desc=name, unit="step", dynamic_ncols=True,
                             disable=jax.process_index() != 0)
        self.started = time.perf_counter()
        self.interval_start, self.interval_steps, self.interval_tokens = None, 0, 0
        self.skipped = 0  # non-finite updates skipped so far (optim.skip_nonfinite), set from a restored state

    def record(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Fetch a step's metrics; raise on a non-finite loss or gradient norm; update the bar; log on log steps."""
        values = {k: v.item() for k, v in jax.device_get(dict(metrics)).items()}
        now = time.perf_counter()
        bad = {k: values[k] for k in GUARDED_METRICS if k in values and not math.isfinite(values[k])}
        skipped = int(values.get("skipped_updates", 0))
        if skipped > self.config.skip_nonfinite:
            raise NonFiniteLossError(f"step {step}: {skipped} updates with non-finite gradients skipped, more than "
                                     f"--config.optim.skip_nonfinite={self.config.skip_nonfinite} ({bad})", step)
        if bad and skipped == self.skipped:
            raise NonFiniteLossError(f"step {step}: {bad} is not finite", step)
        if skipped > self.skipped:
            logging.warning("step %d: %s not finite: %d update(s) skipped, params and optimizer state kept (%d of "
                            "--config.optim.skip_nonfinite=%d)", step, bad, skipped - self.skipped, skipped,
                            self.config.skip_nonfinite)
        self.skipped = skipped
        first_step_s = None
        if self.interval_start is None:  # the first step includes compilation: not a throughput sample
            self.interval_start, first_step_s = now, now - self.started
            logging.info("step %d took %.1f s (compilation included)", step, first_step_s)
        else:
            self.interval_steps += 1
            self.interval_tokens += values.get("tokens", 0)
        seconds = now - self.interval_start
        tokens_per_s = self.interval_tokens / seconds if seconds > 0 else 0.0
        self.bar.set_postfix_str(f"loss {values['loss']:.4f}, {tokens_per_s:,.0f} tok/s", refresh=False)
        self.bar.update(1)
        if self.config.due(step, self.config.log_every_steps):
            logged = {f"train/{k}": v for k, v in values.items()}
            if self.interval_steps:
                logged |= {"perf/steps_per_s": self.interval_steps / seconds, "perf/tokens_per_s": tokens_per_s}
            if first_step_s is not None:
                logged["perf/first_step_s"] = first_step_s
            if (stats := data_stats(self.train_iterator)) is not None:
                logged |= {f"data/{k}": v for k, v in stats.items()}
            self.writer.write(step, logged)
            self.interval_start, self.interval_steps, self.interval_tokens = now, 0, 0
        return values

    def close(self) -> None:
        self.bar.close()


def run(config: LoopConfig, workdir: Workdir, *, step_fn: StepFn, init_state: Callable[[], TrainState],
        abstract_state: TrainState, train_iterator: grain.DatasetIterator, rng: jax.Array,
        eval_fn: Optional[EvalFn] = None, export_fn: Optional[Callable[[TrainState], None]] = None,
        name: str = "train") -> TrainState:
    """Train to `config.num_steps`, resuming from the workdir's latest checkpoint; returns the final state.

    `eval_fn(state, step)` returns metrics logged as `eval/<name>`; `export_fn(state)` runs once
    at the end, after the last checkpoint is written.
    """
    with Checkpointer(workdir.checkpoints, keep=config.keep_checkpoints,
                      async_save=config.async_checkpoints) as checkpointer:
        start, state = checkpointer.restore_newest_good(abstract_state, train_iterator)
        if start is None:
            state, start, resume_step = init_state(), 0, None
        else:
            resume_step = start
            logging.info("%s: resumed from %s/%d", name, checkpointer.directory, start)
        writer = MetricsWriter(workdir.metrics_file, workdir.tensorboard, resume_step=resume_step)
        tracker = _Tracker(config, writer, start, name, train_iterator)
        if (skipped := skipped_updates(state)) is not None:
            tracker.skipped = int(skipped)
        try:
            state = _steps(config, state, start, step_fn, train_iterator, rng, tracker, checkpointer, writer,
                           eval_fn)
            checkpointer.wait()
        except NonFiniteLossError as e:
            checkpointer.wait()
            raise NonFiniteLossError(f"{name}: {e}; stopped without saving this state. "
                                     f"{recovery_advice(checkpointer, e.step)}", e.step) from None
        finally:
            tracker.close()
            writer.close()
            if (stats := data_stats(train_iterator)) is not None:
                logging.info("%s: data: %s (data/* in %s)", name, format_tally(stats), workdir.metrics_file)
    if export_fn is not None:
        export_fn(state)
    return state


def last_sane_checkpoint(steps: list[int], failed_step: int) -> Optional[int]:
    """The newest of `steps` that is sane: its state was finite when saved (the guard saw its step first) and
    the step trained from it (the next one) was finite too, i.e. before `failed_step - 1`."""
    return max((s for s in steps if s < failed_step - 1), default=None)


def recovery_advice(checkpointer: Checkpointer, failed_step: int) -> str:
    """Which checkpoint to go on from after a non-finite step, and how (the same config diverges again)."""
    newest, sane = checkpointer.latest_step(), last_sane_checkpoint(checkpointer.all_steps(), failed_step)
    advice = ("Rerunning the same command resumes from the newest checkpoint and repeats this step exactly: it "
              "diverges again.")
    if newest is not None and newest != sane:
        advice += f" Checkpoint {newest} holds the state step {failed_step} was trained from: not known sane."
    knobs = ("a lower --config.optim.lr (or --config.optim.clip_norm), or --config.optim.skip_nonfinite=N "
             "(skip up to N such updates)")
    if sane is None:
        return f"{advice} No checkpoint is known sane: start over in a fresh --workdir with {knobs}."
    path = checkpointer.step_dir(sane)
    return (f"{advice} The last sane checkpoint (finite, and the step trained from it finite) is step {sane}: "
            f"{path}. To go on from it with {knobs}: mkdir -p NEW/checkpoints && cp -r {path} NEW/checkpoints/ "
            "and rerun with --workdir=NEW and the new settings.")


def _steps(config: LoopConfig, state: TrainState, start: int, step_fn: StepFn, train_iterator, rng: jax.Array,
           tracker: _Tracker, checkpointer: Checkpointer, writer: MetricsWriter,
           eval_fn: Optional[EvalFn]) -> TrainState:
    pending = None  # (step, metrics) not yet fetched from the device: fetched one step late, while the next runs
    for step in range(start + 1, config.num_steps + 1):
        batch = next(train_iterator)
        state, metrics = step_fn(state, batch, jax.random.fold_in(rng, step))
        cpu_runtime.release_if_memory_low()  # the kept heap can outgrow the machine (cpu_runtime)
        if (skipped := skipped_updates(state)) is not None:  # optim.skip_nonfinite: the guard reads the count
            metrics = {**metrics, "skipped_updates": skipped}
        if pending is not None:
            tracker.record(*pending)
        pending = (step, metrics)
        evaluate = eval_fn is not None and config.due(step, config.eval_every_steps)
        save = config.due(step, config.checkpoint_every_steps)  # always at the last step
        if evaluate or save:  # the NaN guard has seen this step before it is evaluated or saved
            tracker.record(*pending)
            pending = None
            cpu_runtime.release_if_memory_low()  # the finished step's freed heap, before eval/save allocate theirs
        if evaluate:  # before the checkpoint: a run killed in between evaluates this step again
            results = {f"eval/{k}": v for k, v in eval_fn(state, step).items()}
            writer.write(step, results)
            logging.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        if save:
            checkpointer.save(step, state, train_iterator)
        if config.step_delay_s:
            time.sleep(config.step_delay_s)
    return state
