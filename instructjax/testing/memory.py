"""The SFT train step's planned per-device peak (`instructjax.train.memory`) against the peak it reaches
when it runs on one CPU device, measured in a fresh process (docs/memory.md#validation).

    python -m instructjax.testing.memory tiny '{"batch_size": 8}'   # experiments/configs/sft.py:tiny

prints {"planned": bytes, "measured": bytes}. The process's peak resident memory (Linux VmHWM) is reset
after the step is compiled (`/proc/self/clear_refs`), then the state and batch are made on the device and
the step runs once: measured = VmHWM - the resident memory before. glibc serves every buffer above 64 KiB
with mmap and returns it at once (`MALLOC_MMAP_THRESHOLD_`), so the resident memory follows the live
buffers rather than what malloc keeps for reuse; the CPU tuning of `ij.cpu_runtime` is off.
"""

from __future__ import annotations

import gc
import json
import os
import pathlib
import subprocess
import sys

ENV = {"JAX_PLATFORMS": "cpu", "INSTRUCTJAX_CPU_TUNING": "0", "MALLOC_MMAP_THRESHOLD_": "65536",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def measured_vs_planned(preset: str, overrides: dict) -> dict[str, int]:
    """{"planned", "measured"} bytes of the SFT step of experiments/configs/sft.py:`preset` with `overrides`
    (dotted key -> value), measured in a fresh Python process."""
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, **ENV, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-m", "instructjax.testing.memory", preset, json.dumps(overrides)],
                         env=env, cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measure(preset: str, overrides: dict) -> dict[str, int]:
    import jax
    import jax.numpy as jnp

    from instructjax import parallel
    from instructjax.testing.experiments import load_experiment_config
    from instructjax.train.config import resolve_dtypes
    from instructjax.train.memory import planned_model, sft_plan, sft_step_program

    config = resolve_dtypes(load_experiment_config("sft", preset, overrides))
    cfg = planned_model(config)
    mesh = parallel.make_mesh((1, 1, 1))
    layout, jitted, args = sft_step_program(config, cfg, mesh)
    with parallel.activation_sharding(mesh, tuple(config.parallel.rules)):
        compiled = jitted.lower(*args).compile()
    planned = sft_plan(layout, compiled, mesh).peak
    make = jax.jit(lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), args[:2]),
                   out_shardings=jax.tree.map(lambda a: a.sharding, args[:2]))
    make.lower().compile()
    gc.collect()
    before = _status_kib("VmRSS")
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    state, batch = make()
    jax.block_until_ready(compiled(state, batch, jax.random.key(0)))
    return {"planned": planned, "measured": (_status_kib("VmHWM") - before) * 1024}


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})))
