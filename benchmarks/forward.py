"""SmolLM2-135M forward pass, batch 8 x 256: instructjax vs transformers, f32 and bf16, same weights.

    python benchmarks/forward.py [--batch 8 --length 256 --repeats 3]
"""

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import flops
import instructjax as ij
from flops import best_of


def ours(cfg, params, tokens, dtype, param_dtype, repeats):
    cfg = cfg.replace(dtype=dtype)
    params = jax.tree.map(lambda x: x.astype(param_dtype), params)
    forward = jax.jit(lambda p, t: ij.models.Transformer(cfg).apply({"params": p}, t))
    start = time.perf_counter()
    forward(params, tokens).block_until_ready()
    compile_s = time.perf_counter() - start
    return best_of(lambda: forward(params, tokens).block_until_ready(), repeats), compile_s


def theirs(model, tokens, mode, repeats):
    import torch
    ids = torch.from_numpy(np.array(tokens)).long()
    m = model.to(torch.bfloat16) if mode == "bf16 weights" else model.float()

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16 autocast"):
            m(ids).logits.float()

    run()
    return best_of(run, repeats)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers
    torch.set_num_threads(os.cpu_count())
    cfg, params, tok = ij.checkpoints.load_default_model()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length)), jnp.int32)
    with tempfile.TemporaryDirectory() as tmp:
        ij.checkpoints.save_hf(tmp, cfg, params)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                               attn_implementation="sdpa")
    hf.eval()
    print(f"machine: {flops.machine()}; jax {jax.__version__}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"forward batch {args.batch} x {args.length}, best of {args.repeats} (seconds; lower is better)")
    rows = [("f32", "float32", "float32", "f32"),
            ("bf16 compute, f32 params / autocast", "bfloat16", "float32", "bf16 autocast"),
            ("bf16 weights", "bfloat16", "bfloat16", "bf16 weights")]
    for label, dtype, param_dtype, hf_mode in rows:
        our_s, compile_s = ours(cfg, params, tokens, dtype, param_dtype, args.repeats)
        their_s = theirs(hf, tokens, hf_mode, args.repeats)
        print(f"{label:38s} instructjax {our_s:6.2f} s (compile {compile_s:5.1f} s)  transformers {their_s:6.2f} s"
              f"  speed-up {their_s / our_s:4.2f}x")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with
    main()
