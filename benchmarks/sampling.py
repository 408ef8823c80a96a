"""Decoding throughput of SmolLM2-135M: `ij.sampling.generate` vs transformers' `generate`, same weights.

Batch 1 and 16, 64-token prompts, 128 new tokens forced (EOS ignored), greedy, KV cache on both
sides, f32 and bf16 weights; both run in this process with the same number of threads; warm-up
excluded (our compile time is reported on its own); the two sides' timed runs alternate, and the
best of each is kept, so that load from other processes hits both alike. Also reports our
tokens/s against the memory-bandwidth bound: every decode step reads all weights once, so
tokens/s <= batch * bandwidth / weight bytes; the bandwidth is measured here as the memory
traffic (bytes read + bytes written) of a large numpy copy. And against the matmul bound: the
time of one decode step's matmuls alone (every weight matrix times `batch` rows, in one jit) is a
floor for a decode step, so tokens/s <= batch / that time, and the largest speed-up over
transformers any sampler on jax's CPU kernels could show is that bound / transformers' tokens/s.

    python benchmarks/sampling.py [--batches 1,16 --dtypes float32,bfloat16 --repeats 2 --threads 2]
    python benchmarks/sampling.py --skip-transformers --profile   # then each generate call's top XLA ops
"""

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import flops
import instructjax as ij
import op_profile
from flops import best_of
from instructjax import sampling


def measure_bandwidth(gigabytes=1.0, repeats=3):
    """GB/s of memory traffic of a large numpy copy (bytes read + bytes written per second) and of
    a numpy sum (bytes read per second; one thread, so a lower bound)."""
    a = np.ones(int(gigabytes * 1e9) // 4, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)  # touch the pages
    copy = best_of(lambda: np.copyto(b, a), repeats)
    read = best_of(lambda: a.sum(), repeats)
    return 2 * a.nbytes / copy / 1e9, a.nbytes / read / 1e9


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ours(cfg, params, tokens, new_tokens, dtype):
    """A function that runs one generate call."""
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)  # bf16 weights, like model.to(bfloat16)
    mask = np.ones(tokens.shape, bool)

    def run():
        out = sampling.generate(cfg, params, tokens, mask, rng=jax.random.key(0), max_new_tokens=new_tokens,
                                temperature=0.0, ignore_eos=True, dtype=dtype)
        jax.block_until_ready(out)
        assert int(out.num_steps) == new_tokens and bool(out.mask.all())
    return run


def weight_matmuls(cfg, params, batch, dtype):
    """A function that runs, in one jit, the matmuls of one decode step and nothing else: `batch` rows
    times every weight matrix (the LM head included), bf16 accumulating in f32 as the model does.
    Its time is a floor for a decode step on jax's CPU kernels, whatever the rest of the step costs."""
    def as_matrix(w):  # [in, out] as the model contracts it: q/k/v [d, heads, hd], o [heads, hd, d]
        return w.reshape(cfg.d_model, -1) if w.shape[0] == cfg.d_model else w.reshape(-1, w.shape[-1])
    kernels, head = [], None
    for path, w in jax.tree_util.tree_leaves_with_path(params):
        if "embed" in jax.tree_util.keystr(path):
            head = jnp.asarray(w, dtype).T if cfg.tie_embeddings else None  # [d, vocab]; else only gathered
        elif w.ndim >= 2:
            kernels.append(as_matrix(jnp.asarray(w, dtype)))
    matrices = kernels + ([head] if head is not None else [])
    rows = {n: jnp.ones((batch, n), dtype) for n in {w.shape[0] for w in matrices}}

    @jax.jit
    def step(matrices):
        return sum(jnp.dot(rows[w.shape[0]], w, preferred_element_type=jnp.float32).sum() for w in matrices)

    step(matrices).block_until_ready()
    return lambda: step(matrices).block_until_ready()


def theirs(model, tokens, new_tokens, dtype):
    """A function that runs one transformers generate call (KV cache, EOS ignored)."""
    import torch
    model = model.to(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    ids = torch.from_numpy(tokens).long()
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                 use_cache=True, eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == tokens.shape[1] + new_tokens, out.shape
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one more of our generate calls per setting: its top XLA ops (op_profile.py)")
    args = parser.parse_args()
    profile = op_profile.OpProfile() if args.profile else None  # before jax's first computation

    import torch
    import transformers
    torch.set_num_threads(args.threads)
    cfg, params, _ = ij.checkpoints.load_default_model()
    hf = None
    if not args.skip_transformers:
        with tempfile.TemporaryDirectory() as tmp:
            ij.checkpoints.save_hf(tmp, cfg, params)
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                                   attn_implementation="sdpa").eval()
        hf.generation_config.eos_token_id = None  # forced length: EOS ignored
    copy_gbs, read_gbs = measure_bandwidth()
    print(f"machine: {flops.machine()}; jax {jax.__version__}, torch {torch.__version__} "
          f"({args.threads} threads), transformers {transformers.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} (other processes slow transformers far more than us)")
    print(f"memory bandwidth: numpy copy {copy_gbs:.1f} GB/s (read + write traffic; the bound below uses it), "
          f"numpy sum {read_gbs:.1f} GB/s (read, one thread)")
    print(f"SmolLM2-135M, {args.prompt_len}-token prompts, {args.new_tokens} new tokens forced, greedy, "
          f"best of {args.repeats} alternating runs after a warm-up")
    results = []
    for dtype in args.dtypes.split(","):
        weight_bytes = cfg.num_params() * jnp.dtype(dtype).itemsize
        for batch in (int(b) for b in args.batches.split(",")):
            tokens = np.random.default_rng(0).integers(100, cfg.vocab_size, (batch, args.prompt_len)).astype(np.int32)
            n_tokens = batch * args.new_tokens
            our_run = ours(cfg, params, tokens, args.new_tokens, dtype)
            first_s = _timed(our_run)  # compilation + one run
            their_run = theirs(hf, tokens, args.new_tokens, dtype) if hf is not None else None
            if their_run is not None:
                their_run()  # warm-up
            our_times, their_times = [], []
            for _ in range(args.repeats):  # alternate, so that outside load hits both sides alike
                our_times.append(_timed(our_run))
                if their_run is not None:
                    their_times.append(_timed(their_run))
            our_s = min(our_times)
            if profile:
                with profile.phase(f"generate, {dtype}, batch {batch} ({args.new_tokens} steps)"):
                    our_run()
            compile_s = first_s - our_s
            matmul_run = weight_matmuls(cfg, params, batch, dtype)
            matmul_s = best_of(matmul_run, 5 * args.repeats)
            bound = batch * copy_gbs * 1e9 / weight_bytes
            matmul_bound = batch / matmul_s
            row = dict(dtype=dtype, batch=batch, ours_tok_s=n_tokens / our_s, ours_seconds=our_s,
                       compile_seconds=compile_s, bound_tok_s=bound, weight_gb=weight_bytes / 1e9,
                       matmul_step_seconds=matmul_s, matmul_bound_tok_s=matmul_bound)
            line = (f"{dtype:9s} batch {batch:3d}: instructjax {n_tokens / our_s:7.1f} tok/s "
                    f"(compile {compile_s:4.1f} s; {100 * n_tokens / our_s / bound:3.0f}% of the bandwidth bound "
                    f"{bound:7.1f} tok/s = {batch} x {copy_gbs:.1f} GB/s / {weight_bytes / 1e9:.2f} GB; "
                    f"{100 * n_tokens / our_s / matmul_bound:3.0f}% of the matmul bound {matmul_bound:7.1f} tok/s = "
                    f"{batch} rows / {1e3 * matmul_s:.1f} ms for one step's matmuls alone)")
            if their_run is not None:
                their_s = min(their_times)
                row.update(transformers_tok_s=n_tokens / their_s, transformers_seconds=their_s,
                           speedup=their_s / our_s, largest_speedup=matmul_bound / (n_tokens / their_s))
                line += (f"  transformers {n_tokens / their_s:7.1f} tok/s  speed-up {their_s / our_s:4.2f}x "
                         f"(at most {matmul_bound / (n_tokens / their_s):4.2f}x at the matmul bound)")
            row["load_average"] = os.getloadavg()[0]
            print(line + f"  [load average {row['load_average']:.1f}]", flush=True)
            results.append(row)
    if profile:
        profile.print_summary()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=cpu_name(), cores=os.cpu_count(), jax=jax.__version__, torch=torch.__version__,
                           transformers=transformers.__version__, threads=args.threads, copy_gb_s=copy_gbs,
                           read_gb_s=read_gbs, results=results), f, indent=1)


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with
    main()
