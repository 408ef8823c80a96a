"""SFT step with and without LoRA on SmolLM2-135M (the embedded default model): median step time, train
state size (params + optimizer state) and the process's peak RSS. One configuration per process, so
that the peak RSS is its own; run it under `/usr/bin/time -v` for the same number from the OS.

    python benchmarks/lora.py --rank 0      # full fine-tuning
    python benchmarks/lora.py --rank 8      # LoRA rank 8 on q, k, v, o, gate, up, down

Batch: `--batch` rows of `--length` random tokens, loss on every token; AdamW; `--dtype` compute over
float32 params (default bfloat16 where bf16 is native here, else float32: train.config.resolve_dtypes).
Timing: `--steps` steps after a compile step, the median reported.
"""

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import flops
from instructjax import checkpoints, cpu_runtime
from instructjax.models import lora
from instructjax.train.initial_model import with_adapters
from instructjax.train.optim import OptimConfig, make_optimizer
from instructjax.train.sft import sft_loss_fn
from instructjax.train.state import TrainState
from instructjax.train.step import make_train_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16" if cpu_runtime.native_bf16() else "float32")
    args = parser.parse_args()

    cfg, params, _ = checkpoints.load_default_model()
    cfg = cfg.replace(dtype=args.dtype)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    lora_cfg = lora.LoraConfig(rank=args.rank, alpha=2.0 * args.rank) if args.rank else None
    cfg, params = with_adapters(cfg, params, lora_cfg, jax.random.key(1))
    tx = make_optimizer(OptimConfig(lr=1e-4))
    state = jax.jit(lambda p: TrainState.create(p, tx))(params)
    del params
    tokens = np.random.default_rng(0).integers(2, cfg.vocab_size, (args.batch, args.length)).astype(np.int32)
    ones = jnp.ones(tokens.shape, bool)
    batch = {"tokens": jnp.asarray(tokens), "positions": jnp.broadcast_to(jnp.arange(args.length), tokens.shape),
             "attention_mask": ones, "segment_ids": ones.astype(jnp.int32), "loss_mask": ones}
    step = jax.jit(make_train_step(sft_loss_fn(cfg, deterministic=True), tx), donate_argnums=0)
    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        state, metrics = step(state, batch, jax.random.key(i))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    print(json.dumps({
        "rank": args.rank, "dtype": args.dtype, "batch": [args.batch, args.length],
        "step_s_median": round(float(np.median(times[1:])), 3), "compile_step_s": round(times[0], 1),
        "trainable_params": sum(x.size for x in jax.tree.leaves(lora.adapters(state.params))) if args.rank
        else sum(x.size for x in jax.tree.leaves(state.params)),
        "params_mb": round(nbytes(state.params) / 2**20, 1), "opt_state_mb": round(nbytes(state.opt_state) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loss": [float(metrics["loss"])], "machine": flops.machine(),
    }))


if __name__ == "__main__":
    main()
