"""Forward + backward of an SFT loss with each `ModelConfig.attention_impl` that runs on this machine
(einsum and xla on a CPU; cudnn too on a GPU), random weights of a preset's shape, bf16 compute over
float32 params, the median of `--repeats` timed runs after a compile run.

    python benchmarks/attention.py [--preset smollm2_135m --batch 4 --length 256 --repeats 5]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import flops
import instructjax as ij
from instructjax.models.functional import init_params
from instructjax.train.sft import sft_loss_fn


def sft_batch(cfg, batch, length):
    """Random tokens, every position real and in the loss."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, length)), jnp.int32)
    ones = jnp.ones(tokens.shape, bool)
    return {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(length), tokens.shape), "attention_mask": ones,
            "segment_ids": ones.astype(jnp.int32), "loss_mask": ones}


def forward_backward(cfg, params, batch):
    """A function that runs one jitted gradient of the SFT loss and waits for it."""
    grad = jax.jit(jax.grad(lambda p, b: sft_loss_fn(cfg, deterministic=True)(p, b, jax.random.key(0))[0]))
    return lambda: jax.block_until_ready(grad(params, batch))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="smollm2_135m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", default="einsum,xla")
    args = parser.parse_args()

    cfg = ij.models.get_preset(args.preset, dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    batch = sft_batch(cfg, args.batch, args.length)
    step_flops = flops.train_flops_per_token(cfg, args.length) * args.batch * args.length
    print(f"machine: {flops.machine()}; jax {jax.__version__} ({jax.devices()[0].device_kind})")
    print(f"{args.preset} shape, random weights, SFT loss forward + backward, batch {args.batch} x {args.length}, "
          f"bf16 compute / f32 params, {step_flops / 1e12:.2f} TFLOP; median of {args.repeats} runs after a compile run")
    for impl in args.impls.split(","):
        run = forward_backward(cfg.replace(attention_impl=impl), params, batch)
        compile_s = flops.timings(run, 1)[0]
        times = flops.timings(run, args.repeats)
        median = float(np.median(times))
        print(f"{impl:7s} median {median:6.2f} s ({step_flops / median / 1e9:5.0f} GFLOP/s; first run {compile_s:5.1f} s; "
              f"runs {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    print(f"machine after: {flops.machine()}")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with
    main()
