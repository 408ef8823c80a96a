"""Helpers for tests of the experiment scripts: load a preset with overrides, compare runs."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator, Sequence, Union

import jax
import ml_collections
import numpy as np

from instructjax import checkpoints
from instructjax.train import config as train_config
from instructjax.train.metrics import read_metrics

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "configs"
DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"


def load_experiment_config(stage: str, preset: str = "tiny", overrides: dict | None = None
                           ) -> ml_collections.ConfigDict:
    """`experiments/configs/{stage}.py:{preset}` with dotted-key overrides ("optim.lr": 0.1)."""
    spec = importlib.util.spec_from_file_location(f"{stage}_config", CONFIGS / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset)
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        setattr(config[section] if section else config, field, value)
    return config


def without_timings(records: list[dict]) -> list[dict]:
    """metrics.jsonl records minus the wall-clock `perf/*` entries, for comparing two runs."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def assert_same_run(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """Two runs logged the same metrics (wall-clock timings aside) and exported identical params."""
    assert without_timings(read_metrics(workdir / "metrics.jsonl")) == \
        without_timings(read_metrics(reference / "metrics.jsonl"))
    _, params = checkpoints.load_hf(workdir / "export")
    _, want = checkpoints.load_hf(reference / "export")
    jax.tree.map(np.testing.assert_array_equal, params, want)


def config_leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every leaf field of a config."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from config_leaf_paths(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def commented_fields(path: pathlib.Path, function: str) -> set[str]:
    """Dotted fields that `function` in the file at `path` assigns with a trailing comment:
    `c.optim.lr = 1e-5  # peak learning rate` -> "optim.lr" (whatever the config's local name)."""
    source = path.read_text()
    node = next((n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if node is None:
        raise ValueError(f"{path}: no function {function!r}")
    lines = source.splitlines()[node.lineno - 1:node.end_lineno]
    return {m.group(1) for line in lines if (m := re.match(r"\s*\w+\.([\w.]+) = .*  # ", line))}


def documented_config_paths(stage: str) -> set[str]:
    """Full dotted paths of the fields of `experiments/configs/{stage}.py` declared with a comment: the
    file's own `config.x = ...  # why` lines, and those of each section builder of
    `instructjax.train.config` it calls, under the path it puts the section at
    (`config = base_config()`: the root; `config.ptx.data = data_config(...)`: "ptx.data.")."""
    path = CONFIGS / f"{stage}.py"
    documented = commented_fields(path, "get_config")
    library = pathlib.Path(train_config.__file__)
    for line in path.read_text().splitlines():
        mount = re.match(r"\s*config((?:\.\w+)*) = (\w+)\(", line)
        if mount and callable(getattr(train_config, mount.group(2), None)):
            prefix = mount.group(1)[1:] + "." if mount.group(1) else ""
            documented |= {prefix + field for field in commented_fields(library, mount.group(2))}
    return documented


def run_experiment(stage: str, workdir: pathlib.Path, log: pathlib.Path, *flags: str, preset: str = "tiny",
                   devices: int | None = None, wait: bool = True, timeout_s: float = 400) -> subprocess.Popen:
    """`experiments/{stage}.py --config=experiments/configs/{stage}.py:{preset} --workdir=WORKDIR FLAGS...` on
    the CPU, its output in `log`; `devices` fake CPU devices (None: those of this process's XLA_FLAGS). Compiled
    programs are shared between the runs of a test through JAX's persistent cache (next to the log).
    `wait`: until it exits, which must be with status 0 (else the log's tail is shown)."""
    cmd = [sys.executable, str(CONFIGS.parent / f"{stage}.py"), f"--config={CONFIGS / stage}.py:{preset}",
           f"--workdir={workdir}", *flags]
    env = os.environ | {"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(log.parent / "jax_cache"),
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    if devices is not None:
        env["XLA_FLAGS"] = xla_flags_with_devices(env.get("XLA_FLAGS", ""), devices)
    with open(log, "w") as output:
        process = subprocess.Popen(cmd, cwd=CONFIGS.parents[1], stdout=output, stderr=output, env=env)
    if wait:
        assert process.wait(timeout=timeout_s) == 0, log.read_text()[-3000:]
    return process


def xla_flags_with_devices(xla_flags: str, devices: int) -> str:
    """An `XLA_FLAGS` value with `devices` fake CPU devices and the other flags of `xla_flags` (the suite's
    compilation settings reach the experiments it runs)."""
    kept = [flag for flag in xla_flags.split() if not flag.startswith(f"--{DEVICE_COUNT_FLAG}=")]
    return " ".join([*kept, f"--{DEVICE_COUNT_FLAG}={devices}"])


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(stage: str, workdir: pathlib.Path, log_dir: pathlib.Path, *flags: str, processes: int = 2,
                  devices: int = 4, wait: bool = True, timeout_s: float = 400) -> list[subprocess.Popen]:
    """`run_experiment` as one job of `processes` processes on 127.0.0.1 (coordinator on a free port),
    `devices` fake CPU devices each, logs in LOG_DIR/process_<i>.log. `wait`: until all exit, each with
    status 0 within `timeout_s` (else all are killed and the logs' tails shown).

    Give each job its own LOG_DIR: the persistent compilation cache is kept there, and with one shared
    by several jobs process 0 loads its programs from it while the others compile theirs (only process
    0 writes it); on jax 0.10 CPU the process that ran ahead then stopped the job (PPO: a compiling
    process missed the coordinator's heartbeats for 100 s, every time)."""
    job = ("--config.parallel.multi_host=True", f"--config.parallel.coordinator_address=127.0.0.1:{free_port()}",
           f"--config.parallel.num_processes={processes}")
    logs = [log_dir / f"process_{i}.log" for i in range(processes)]
    running = [run_experiment(stage, workdir, log, *flags, *job, f"--config.parallel.process_id={i}", devices=devices,
                              wait=False) for i, log in enumerate(logs)]
    if wait:
        deadline = time.time() + timeout_s
        try:
            codes = [p.wait(timeout=max(deadline - time.time(), 0)) for p in running]
        except subprocess.TimeoutExpired:
            codes = None
        finally:
            _kill(running)
        assert codes == [0] * processes, (codes, [log.read_text()[-3000:] for log in logs])
    return running


def _kill(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate()


def kill_after_checkpoint(processes: Union[subprocess.Popen, Sequence[subprocess.Popen]],
                          checkpoint_dir: pathlib.Path, timeout_s: float) -> None:
    """SIGKILL a running experiment (all the processes of one) as soon as `checkpoint_dir` exists (a
    crash mid-run, for resume tests)."""
    processes = [processes] if isinstance(processes, subprocess.Popen) else list(processes)
    deadline = time.time() + timeout_s
    try:
        while not checkpoint_dir.is_dir():
            assert all(p.poll() is None for p in processes) and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        _kill(processes)


def last_logged_step(metrics_file: pathlib.Path) -> int:
    """The step of the last complete line of a metrics.jsonl being written (0: none yet)."""
    lines = metrics_file.read_text().split("\n")[:-1] if metrics_file.exists() else []
    return max((int(m.group(1)) for line in lines[-3:] if (m := re.match(r'\{"step": (\d+)', line))), default=0)


def kill_at_random_points(start: Callable[[int], subprocess.Popen], metrics_file: pathlib.Path, num_steps: int, *,
                          seed: int, kills: int, max_delay_s: float = 0.5, timeout_s: float = 300
                          ) -> list[tuple[int, float]]:
    """SIGKILL a run `kills` times at seeded random points: `start(i)` (re)starts it (the i-th time) and kill i
    comes a random delay (< `max_delay_s`) after `metrics_file` reaches a random step (drawn in 1..num_steps, in
    increasing order; at least one step past where the last run was killed): mid-step, during a checkpoint write,
    an evaluation or the export. Returns the (step, delay) of each kill; the caller then runs it to the end."""
    rng = random.Random(seed)
    drawn = [(step, rng.uniform(0, max_delay_s)) for step in sorted(rng.choices(range(1, num_steps + 1), k=kills))]
    points = []
    for i, (step, delay) in enumerate(drawn):
        target = max(step, min(last_logged_step(metrics_file) + 1, num_steps))
        points.append((target, delay))
        process, deadline = start(i), time.time() + timeout_s
        while process.poll() is None and last_logged_step(metrics_file) < target:
            assert time.time() < deadline, f"run {i}: step {target} not reached in {timeout_s} s"
            time.sleep(0.02)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        status = process.wait(timeout=timeout_s)
        assert status in (0, -signal.SIGKILL), f"run {i} failed (status {status}) before its kill at step {target}"
    return points


def assert_same_export(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """Two runs exported the same files, byte for byte."""
    files = sorted(p.relative_to(reference / "export") for p in (reference / "export").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(workdir / "export") for p in (workdir / "export").rglob("*") if p.is_file())
    for name in files:
        assert (workdir / "export" / name).read_bytes() == (reference / "export" / name).read_bytes(), name
