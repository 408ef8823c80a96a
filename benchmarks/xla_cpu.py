"""Which library runs XLA:CPU's matmuls fastest here: YNNPACK (jaxlib 0.10's default), Eigen, XNNPACK or
oneDNN, each in its own process (jax reads XLA_FLAGS once), all with `ij.cpu_runtime.apply()`'s settings.

    python benchmarks/xla_cpu.py                      # f32, SmolLM2-135M forward + backward at [8, 256]
    python benchmarks/xla_cpu.py --dtype bfloat16 --libraries ynnpack eigen

Per library: a 2048^3 matmul (median of 5), the model's own matmul shapes (each weight's forward, input-
and weight-gradient matmul over `--batch` x `--length` tokens, median of 5, summed over the layers) and
the whole forward + backward of the next-token loss (median of 3 after compilation). A library whose
process does not finish within `--timeout` seconds is reported as such (oneDNN hung on an AVX2-only CPU).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

import flops

# XLA_FLAGS of each library (added to `ij.cpu_runtime`'s `-REDUCE`, which every setting keeps).
NO_YNN_DOT = "--xla_cpu_experimental_ynn_fusion_type=-REDUCE,-DOT"
LIBRARIES = {
    "ynnpack": "",
    "eigen": NO_YNN_DOT,
    "xnnpack": f"{NO_YNN_DOT} --xla_cpu_experimental_xnn_fusion_type=dot",
    "onednn": f"{NO_YNN_DOT} --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
}


def median_seconds(fn, repeats):
    """The median of `repeats` timings of `fn()` after one untimed call (compilation)."""
    fn()
    return float(np.median(flops.timings(fn, repeats)))


def measure(dtype, batch, length):
    """This process's numbers (its XLA_FLAGS set by the parent), as a dict."""
    import instructjax as ij
    ij.cpu_runtime.apply()
    import jax
    import jax.numpy as jnp

    def matmul_seconds(m, k, n, form):
        x, w, dy = (jnp.ones(s, dtype) for s in ((m, k), (k, n), (m, n)))
        f, operands = {"forward": (jax.jit(lambda a, b: a @ b), (x, w)),
                       "input_grad": (jax.jit(lambda a, b: a @ b.T), (dy, w)),
                       "weight_grad": (jax.jit(lambda a, b: a.T @ b), (x, dy))}[form]
        return median_seconds(lambda: f(*operands).block_until_ready(), 5)

    square_s = matmul_seconds(2048, 2048, 2048, "forward")
    cfg, params, _ = ij.checkpoints.load_default_model()
    cfg = cfg.replace(dtype=dtype)
    tokens, kv = batch * length, cfg.num_kv_heads * cfg.head_dim
    shapes = {"q, o": (cfg.d_model, cfg.num_heads * cfg.head_dim, 2 * cfg.num_layers),
              "k, v": (cfg.d_model, kv, 2 * cfg.num_layers),
              "gate, up": (cfg.d_model, cfg.ffn_dim, 2 * cfg.num_layers),
              "down": (cfg.ffn_dim, cfg.d_model, cfg.num_layers),
              "lm head": (cfg.d_model, cfg.vocab_size, 1)}
    matmul_s = {name: count * sum(matmul_seconds(tokens, k, n, form)
                                  for form in ("forward", "input_grad", "weight_grad"))
                for name, (k, n, count) in shapes.items()}
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length)), jnp.int32)
    model = ij.models.Transformer(cfg)

    def loss(p, t):
        logits = model.apply({"params": p}, t).astype(jnp.float32)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), t[:, 1:, None], -1).mean()
    step = jax.jit(jax.value_and_grad(loss))
    step_s = median_seconds(lambda: jax.block_until_ready(step(params, ids)), 3)  # the first call compiles
    return {"square_gflops": 2 * 2048 ** 3 / 1e9 / square_s, "matmul_s": matmul_s, "step_s": step_s}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.dtype, args.batch, args.length)))
        return
    print(f"machine: {flops.machine()}")
    print(f"{args.dtype}; forward + backward of SmolLM2-135M at [{args.batch}, {args.length}]")
    for library in args.libraries:
        env = os.environ | {"XLA_FLAGS": LIBRARIES[library]}
        cmd = [sys.executable, __file__, "--child", "--dtype", args.dtype, "--batch", str(args.batch),
               "--length", str(args.length)]
        try:
            done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{library:8s} did not finish within {args.timeout:.0f} s")
            continue
        if done.returncode:
            print(f"{library:8s} failed (exit status {done.returncode})")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        shapes = ", ".join(f"{k} {v:.2f}" for k, v in r["matmul_s"].items())
        print(f"{library:8s} 2048^3 matmul {r['square_gflops']:6.1f} GFLOP/s; the model's matmuls alone "
              f"{sum(r['matmul_s'].values()):5.2f} s ({shapes}); forward + backward {r['step_s']:5.2f} s")


if __name__ == "__main__":
    main()
