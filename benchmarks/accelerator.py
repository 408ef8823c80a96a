"""One prepared run on one H100 / H200 (at most 8 minutes), one table: SFT step MFU of a Llama-3.2-1B-shaped
model (random weights, bf16 compute over float32 params), decode tokens/s at batch 64 and 256 against the
HBM-bandwidth bound, and one PPO and one GRPO iteration split into generate, score and update.

    python benchmarks/accelerator.py           # = make bench-accelerator; without a GPU it says so and exits 0
    python benchmarks/accelerator.py --smoke   # the tiny preset, small sizes, on any device (CPU: the code paths)

Peaks (SXM parts): H100 3.35 TB/s, H200 4.8 TB/s of HBM, 989 TFLOP/s dense bf16 both; another GPU gets
no MFU or bound, a smoke run on a CPU its MFU against a bf16 matmul measured there. MFU counts the model
FLOPs of benchmarks/flops.py (matmuls and attention, forward + backward). The decode bound reads every
bf16 weight and the KV cache of the filled slots (prompt + half the new tokens on average) once per
step; our sampler reads all of the cache's slots, so it cannot reach it. Decode times are whole
`generate` calls (prefill included), the median of 3 after a compile run. PPO (benchmarks/ppo.py: a
separate value model, a reward model from the policy's trunk) and GRPO (benchmarks/grpo.py, a host
reward: the fraction of even token ids) run 2 iterations each; the second is reported. Sections that
fail (memory) print their error in the table; sections past `--budget-s` are skipped.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import attention
import flops
import grpo
import instructjax as ij
import ppo
import sampling as sampling_bench
from instructjax.models.functional import init_params
from instructjax.rewards.scoring import reward_params_from_lm
from instructjax.sampling import default_cache_dtype
from instructjax.train.sft import sft_loss_fn
from instructjax.train.state import TrainState

PEAKS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12)}  # device kind contains -> (HBM B/s, bf16 FLOP/s)
SIZES = {  # full: a 1B model on one 80 GB GPU; smoke: the tiny preset on a CPU in about a minute
    "full": dict(preset="llama3_2_1b", sft_rows=8, sft_length=1024, sft_steps=5, prompt_len=128, new_tokens=128,
                 ppo_prompts=64, grpo_prompts=16),
    "smoke": dict(preset="tiny", sft_rows=2, sft_length=32, sft_steps=2, prompt_len=8, new_tokens=8,
                  ppo_prompts=8, grpo_prompts=4),
}
DECODE_BATCHES, GROUP_SIZE, MINIBATCHES = (64, 256), 4, 2
EOS_ID, PAD_ID = 1, 0  # EOS is ignored: every row runs all new tokens


def device_peaks(kind):
    """(HBM bytes/s, bf16 FLOP/s) of a device kind, or (None, None) when not in PEAKS."""
    return next((peaks for name, peaks in PEAKS.items() if name in kind), (None, None))


def random_prompts(cfg, rows, length, seed=0):
    return np.random.default_rng(seed).integers(2, cfg.vocab_size, (rows, length)).astype(np.int32)


def sft(cfg, size, flop_peak):
    """One row: the median step of `sft_steps` after a compile step, and its MFU."""
    tx = optax.adamw(1e-5, b1=0.9, b2=0.95)
    step = jax.jit(ij.train.make_train_step(sft_loss_fn(cfg, deterministic=True), tx), donate_argnums=0)
    state = [TrainState.create(init_params(cfg, jax.random.key(0)), tx)]
    batch = attention.sft_batch(cfg, size["sft_rows"], size["sft_length"])

    def run():
        state[0], metrics = step(state[0], batch, jax.random.key(0))
        jax.block_until_ready(metrics)

    flops.timings(run, 1)
    seconds = float(np.median(flops.timings(run, size["sft_steps"])))
    achieved = flops.train_flops_per_token(cfg, size["sft_length"]) * size["sft_rows"] * size["sft_length"] / seconds
    mfu = f"MFU {achieved / flop_peak:.1%}" if flop_peak else "MFU n/a"
    return (f"SFT step, attention {cfg.attention_impl}", f"{size['sft_rows']} x {size['sft_length']} tokens",
            seconds, f"{achieved / 1e12:.3g} TFLOP/s, {mfu}",
            f"peak {flop_peak / 1e12:.3g} TFLOP/s" if flop_peak else "")


def decode(cfg, size, batch, bandwidth):
    """One row: tokens/s of a greedy `generate` of `new_tokens` after `prompt_len`, against the bound."""
    params = init_params(cfg, jax.random.key(0))
    prompts, new = random_prompts(cfg, batch, size["prompt_len"]), size["new_tokens"]
    run = sampling_bench.ours(cfg, params, prompts, new, "bfloat16")
    flops.timings(run, 1)
    seconds = float(np.median(flops.timings(run, 3)))
    tok_s = batch * new / seconds
    bound = ""
    if bandwidth:
        cache_itemsize = jnp.dtype(default_cache_dtype("bfloat16", jax.devices()[0].platform)).itemsize
        step_bytes = flops.decode_bytes_per_step(cfg, batch, size["prompt_len"] + new / 2, 2, cache_itemsize)
        bound_tok_s = batch * bandwidth / step_bytes
        bound = f"bound {bound_tok_s:,.0f} tok/s ({step_bytes / 1e9:.2f} GB/step): {tok_s / bound_tok_s:.0%}"
    return (f"decode, batch {batch}", f"{size['prompt_len']} + {new} tokens, bf16", seconds, f"{tok_s:,.0f} tok/s",
            bound)


def ppo_iteration(cfg, size):
    """One row: the second of 2 PPO iterations (benchmarks/ppo.py), split into its phases."""
    # on the host, as benchmarks/ppo.py loads them: the update donates the policy and value params, so
    # the reference and reward models must not share their device buffers (the f32 score head)
    params = jax.device_get(init_params(cfg, jax.random.key(0)))
    reward_params = reward_params_from_lm(cfg, params, jax.random.key(1))
    prompts = jnp.asarray(random_prompts(cfg, size["ppo_prompts"], size["prompt_len"]))
    args = argparse.Namespace(value="separate", dtype="bfloat16", new_tokens=size["new_tokens"],
                              minibatches=MINIBATCHES, iterations=2)
    last = ppo.ours(args, cfg, params, reward_params, prompts, jnp.ones(prompts.shape, bool), EOS_ID, PAD_ID)[-1]
    return phases_row("PPO iteration", f"{size['ppo_prompts']} prompts, separate value model", last,
                      last["generate_s"], last["score_s"], last["update_s"])


def grpo_iteration(cfg, size):
    """One row: the second of 2 GRPO iterations (benchmarks/grpo.py); its reward and score phases together."""
    params = init_params(cfg, jax.random.key(0))
    rows = random_prompts(cfg, 2 * size["grpo_prompts"], size["prompt_len"]).tolist()
    args = argparse.Namespace(dtype="bfloat16", new_tokens=size["new_tokens"], microbatches=MINIBATCHES,
                              group_size=GROUP_SIZE, iterations=2, prompts=size["grpo_prompts"])
    even_ids = lambda i, out: np.mean(np.asarray(out.tokens) % 2 == 0, axis=1).tolist()
    last = grpo.ours(args, cfg, params, rows, even_ids, EOS_ID, PAD_ID)[0][-1]
    return phases_row("GRPO iteration", f"{size['grpo_prompts']} prompts x {GROUP_SIZE} samples", last,
                      last["generate_s"], last["reward_s"] + last["score_s"], last["update_s"])


def phases_row(name, setting, last, generate_s, score_s, update_s):
    return (name, setting, last["total_s"], f"generate {generate_s:.2f} s, score {score_s:.2f} s, "
            f"update {update_s:.2f} s", "")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="the tiny preset and small sizes, on any device")
    parser.add_argument("--sft-attention", default=None, help="attention_impl of the SFT step (default: cudnn on "
                        "a GPU, else xla)")
    parser.add_argument("--rl-attention", default="einsum", help="attention_impl of decoding, PPO and GRPO")
    parser.add_argument("--budget-s", type=float, default=420, help="sections that would start later are skipped")
    args = parser.parse_args()

    start = time.perf_counter()
    device = jax.devices()[0]
    if device.platform != "gpu" and not args.smoke:
        print(f"no accelerator present (jax devices: {device.platform}, {device.device_kind}): nothing measured; "
              "--smoke runs the code paths on the tiny model here")
        return
    ij.train.quiet_library_logs()
    size = SIZES["smoke" if args.smoke else "full"]
    bandwidth, flop_peak = device_peaks(device.device_kind)
    if device.platform == "cpu":
        flop_peak = flops.jax_matmul_peak("bfloat16", n=512) * 1e9
    cfg = ij.models.get_preset(size["preset"], dtype="bfloat16")
    sft_cfg = cfg.replace(attention_impl=args.sft_attention or ("cudnn" if device.platform == "gpu" else "xla"))
    rl_cfg = cfg.replace(attention_impl=args.rl_attention)
    sections = [("SFT step", lambda: sft(sft_cfg, size, flop_peak))]
    sections += [(f"decode, batch {b}", lambda b=b: decode(rl_cfg, size, b, bandwidth)) for b in DECODE_BATCHES]
    sections += [("PPO iteration", lambda: ppo_iteration(rl_cfg, size)),
                 ("GRPO iteration", lambda: grpo_iteration(rl_cfg, size))]
    rows = []
    for name, section in sections:
        if time.perf_counter() - start > args.budget_s:
            rows.append((name, "skipped: past --budget-s", float("nan"), "", ""))
            continue
        try:
            rows.append(section())
        except Exception as e:  # noqa: BLE001 (a failed section, e.g. out of memory, still leaves the others)
            first_line = (str(e).splitlines() or [""])[0][:160]
            rows.append((name, "failed", float("nan"), f"{type(e).__name__}: {first_line}", ""))
    print(f"\n{size['preset']} shape, random weights, bf16 compute / f32 params; {device.device_kind}; "
          f"jax {jax.__version__}; {time.perf_counter() - start:.0f} s in all")
    print("| measurement | setting | seconds | result | against |\n|---|---|---|---|---|")
    for name, setting, seconds, result, against in rows:
        print(f"| {name} | {setting} | {seconds:.3f} | {result} | {against} |")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # XLA:CPU settings on a CPU (the smoke run); nothing on a GPU host
    main()
