"""Model FLOP and decode-byte counts, a measured matmul peak, repeated timing and the machine's
description, shared by the benchmarks.

Counts are of the matmuls only (2 FLOPs per multiply-add; backward = 2 x forward), split into the
trunk (every block's projections) and the LM head, so a pass that needs the head at some
positions only can count it there only.
"""

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> str:
    """CPU model (/proc/cpuinfo), which of CPU_FLAGS it has, whether `dtype="auto"` means bf16 here, core
    count and the load average now."""
    from instructjax import cpu_runtime
    name, flags = platform.processor() or platform.machine(), cpu_runtime.cpu_flags()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    has = [flag for flag in CPU_FLAGS if flag in flags]
    missing = [flag for flag in CPU_FLAGS if flag not in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    bf16 = "yes (dtype auto = bfloat16)" if cpu_runtime.native_bf16() else "no (dtype auto = float32)"
    return (f"{name}, {os.cpu_count()} cores; flags: {' '.join(has) or '-'} (not: {' '.join(missing) or '-'}); "
            f"native bf16: {bf16}; load average {load}")


def timings(fn, repeats):
    """`repeats` wall-clock timings of `fn()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_of(fn, repeats):
    """The shortest of `repeats` wall-clock timings of `fn()`, in seconds."""
    return min(timings(fn, repeats))


def jax_matmul_peak(dtype="bfloat16", n=2048, repeats=10):
    """GFLOP/s of an n^3 jax matmul of `dtype` operands accumulated in float32 (as the models run)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    matmul = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    matmul(a).block_until_ready()
    return 2 * n ** 3 / 1e9 / best_of(lambda: matmul(a).block_until_ready(), repeats)


def trunk_and_head_params(cfg):
    """(matmul params of the blocks, params of the LM head); embeddings gathered, not multiplied."""
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return cfg.num_params() - embeddings, cfg.vocab_size * cfg.d_model


def attention_flops(cfg, length):
    """Forward FLOPs per token of the scores and the weighted values over `length` keys."""
    return 4 * cfg.num_layers * length * cfg.num_heads * cfg.head_dim


def train_flops_per_token(cfg, length):
    """Forward + backward per token with the LM head at every position (PaLM appendix B)."""
    trunk, head = trunk_and_head_params(cfg)
    return 3 * (2 * (trunk + head) + attention_flops(cfg, length))


def decode_bytes_per_step(cfg, batch, cached_tokens, weight_itemsize, cache_itemsize):
    """Bytes one decode step must read: every weight once and the keys and values of `cached_tokens`
    tokens in each of `batch` rows (embedding rows gathered are left out)."""
    kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * cache_itemsize
    return cfg.num_params() * weight_itemsize + batch * cached_tokens * kv


def ppo_iteration_flops(cfg, prompts, prompt_len, new_tokens, epochs=1, *, reward_model=True, values=True,
                        recompute=True):
    """Matmul FLOPs of one PPO iteration as docs/formulas.md runs it, with the LM head only where a
    log-prob is needed (response positions): generation (prefill + one token per step), scoring
    (reference log-probs, reward model), old log-probs and values recomputed with the training
    forward, and `epochs` passes of policy and value forward + backward. Policy, reference, reward
    and value models share `cfg`'s trunk. Attention is left out (a few % at these lengths).
    `reward_model` / `values` False: a reward function / no value model (group baselines); `recompute`
    False: no old log-probs forward (`PPOConfig.recomputes_old`, one optimizer step)."""
    trunk, head = trunk_and_head_params(cfg)
    tokens, responses = prompts * (prompt_len + new_tokens), prompts * new_tokens
    forward_lm = 2 * (trunk * tokens + head * responses)  # policy or reference, log-probs of the response
    forward_scalar = 2 * trunk * tokens                    # reward or value model
    scoring, recomputed = ("reference and reward" if reward_model else "reference",
                           "old log-probs and values" if values else "old log-probs")
    parts = {"generation": forward_lm, scoring: forward_lm + reward_model * forward_scalar,
             recomputed: recompute * (forward_lm + values * forward_scalar),
             "update": epochs * 3 * (forward_lm + values * forward_scalar)}
    return {name: flop for name, flop in parts.items() if flop}


def print_flop_bound(parts, dtype, ours_s, theirs_s=None):
    """The iteration's matmul FLOPs (`parts`) at the matmul peak of `dtype` measured now: the fastest any
    implementation on jax's CPU kernels could go (`ours_s`: our seconds per iteration), and so the largest
    speed-up over the competitor's `theirs_s` it could show."""
    total = sum(parts.values())
    peak = jax_matmul_peak(dtype)
    floor = total / 1e9 / peak
    print(f"matmul FLOPs per iteration: {total / 1e12:.1f} TFLOP (" +
          ", ".join(f"{k} {v / 1e12:.1f}" for k, v in parts.items()) + ")")
    print(f"jax {dtype} matmul peak now: {peak:.0f} GFLOP/s -> at least {floor:.1f} s per iteration; "
          f"instructjax takes {ours_s / floor:.2f}x that ({floor / ours_s:.0%} of the peak)")
    if theirs_s is not None:
        print(f"largest speed-up over the competitor at that peak: {theirs_s / floor:.2f}x")


def built_dataset(kind: str, records, tmp: str):
    """Write `records` to TMP/KIND.jsonl and build the project's `kind` dataset of it: (the file, the build)."""
    import json
    from instructjax import datasets
    jsonl = os.path.join(tmp, f"{kind}.jsonl")
    with open(jsonl, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return jsonl, datasets.build(datasets.DatasetConfig(kind, (jsonl,)), os.path.join(tmp, "data"))


def add_competitor_arguments(parser) -> None:
    """The options every benchmark against TRL shares: our compute dtype, torch threads, skipping TRL, and
    the internal pair that runs TRL's side in a process of its own (`competitor_in_subprocess`)."""
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (TRL side)")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--competitor-only", action="store_true", help="(internal) run TRL's side only")
    parser.add_argument("--result-file", help="(internal) where --competitor-only writes its results")


def competitor_in_subprocess(script: str, argv: list, flag: str = "--competitor-only") -> dict:
    """Run `script` again with `argv` + `flag` + a result file in a fresh process (same python, same
    environment; the script applies the same process settings there) and return the JSON it writes: the
    competitor then does not share the memory our side keeps (glibc settings of ij.cpu_runtime keep the
    peak), so the two do not add up on a small machine."""
    import json
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        subprocess.run([sys.executable, script, *argv, flag, "--result-file", out], check=True)
        with open(out) as f:
            return json.load(f)
