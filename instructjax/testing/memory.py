"""A stage's planned per-device peak (`instructjax.train.memory`) against the peak it reaches
when it runs on one CPU device, measured in a fresh process (docs/memory.md#validation).

    python -m instructjax.testing.memory sft tiny '{"batch_size": 8}'   # experiments/configs/sft.py:tiny

prints {"planned": bytes, "measured": bytes}. The process's peak resident memory (Linux VmHWM) is reset
after the programs are compiled (`/proc/self/clear_refs`), then the state and inputs are made on the
device (zeros) and the programs run once (PPO: rollout, scoring, update in turn): measured = VmHWM - the
resident memory before. glibc serves every buffer above 64 KiB
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


def measured_vs_planned(stage: str, preset: str, overrides: dict) -> dict[str, int]:
    """{"planned", "measured"} per-device peak bytes of `stage` ("sft": the train step; "ppo": one
    iteration's rollout, scoring and update) of experiments/configs/<stage>.py:`preset` with `overrides`
    (dotted key -> value), measured in a fresh Python process on one CPU device."""
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, **ENV, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-m", "instructjax.testing.memory", stage, preset, json.dumps(overrides)],
                         env=env, cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _zeros(tree):
    """Zeros of a tree of `ShapeDtypeStruct`s, made on their shardings by one compiled program."""
    import jax
    import jax.numpy as jnp
    make = jax.jit(lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree),
                   out_shardings=jax.tree.map(lambda a: a.sharding, tree))
    return make.lower().compile()


def _measure(stage: str, preset: str, overrides: dict) -> dict[str, int]:
    import jax

    from instructjax import parallel
    from instructjax.testing.experiments import load_experiment_config
    from instructjax.train import memory, ppo
    from instructjax.train.config import resolve_dtypes

    config = resolve_dtypes(load_experiment_config(stage, preset, overrides))
    cfg = memory.planned_model(config)
    mesh = parallel.make_mesh((1, 1, 1))
    key = jax.random.key(0)
    if stage == "sft":
        layout, jitted, (state, batch, _) = memory.sft_step_program(config, cfg, mesh)
        with parallel.activation_sharding(mesh, tuple(config.parallel.rules)):
            step = jitted.lower(state, batch, key).compile()
        planned = memory.sft_plan(layout, step, mesh).peak
        make = _zeros((state, batch))

        def run(arrays):
            return step(*arrays, key)
    else:
        p = memory.ppo_programs(config, cfg, mesh)
        planned = memory.ppo_plan(p, mesh).peak
        # with LoRA the reference is the policy's base weights (no copy), as in train_ppo
        make = _zeros((p.layout.abstract, None if cfg.lora else p.ref, p.reward, p.prompts, p.function_scores, p.ptx))

        def run(arrays):
            state, ref, reward, prompts, scores, ptx = arrays
            ref = ppo.lora_reference(state.policy.params) if ref is None else ref
            out = p.rollout(state.policy.params, *prompts, key)
            rollout = p.scoring(ref, reward, out, scores)
            del out
            return p.update(state, rollout, ptx, key)
    gc.collect()
    before = _status_kib("VmRSS")
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    jax.block_until_ready(run(make()))
    return {"planned": planned, "measured": (_status_kib("VmHWM") - before) * 1024}


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})))
