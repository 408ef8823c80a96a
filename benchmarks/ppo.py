"""One PPO iteration on SmolLM2-135M, instructjax against TRL 1.12.0's PPO (`trl.experimental.ppo`,
the last TRL with a PPO trainer), broken down into generation, scoring and update seconds.

    make .venv-trl112        # once: trl==1.12.0, torch 2.13.0 (CPU) etc. in their own virtualenv
    python benchmarks/ppo.py # full size (= make bench-ppo): 64 prompts x 64 tokens, 64 new tokens, bf16
    python benchmarks/ppo.py --prompts 8 --new-tokens 8 --iterations 2    # smoke size
    python benchmarks/ppo.py --skip-trl --profile   # ours, then where each phase's time goes (top XLA ops)

Ours runs in this process, TRL in a subprocess with the .venv-trl112 python (benchmarks/ppo_trl.py),
one after the other. Same model on both sides: the embedded SmolLM2-135M-Instruct as policy and
reference (written with `save_hf` for TRL); reward and value model: its trunk with the same fresh
scalar head (exported as `LlamaForSequenceClassification`). Same prompts of exactly `--prompt-len`
real tokens (the shipped ones in ChatML, each preceded by earlier ones), `--new-tokens` forced (EOS
ignored: our sampler's `ignore_eos`, TRL with no stop token), 1 epoch, `--minibatches` minibatches,
one rollout batch of all prompts, `--threads` torch threads. Precision, bf16 on both sides: our
policy and value model compute in bf16 over f32 master weights, reference and reward model are
kept in bf16 (`frozen_model`); TRL gets `ACCELERATE_MIXED_PRECISION=bf16` (its `bf16=True` alone has
no effect), f32 policy / value weights, bf16 reference / reward weights, and its generation wrapped
in bf16 autocast (TRL itself would generate in f32 on CPU: `--trl-f32-generation`). The first
iteration (our compilation, TRL's warm-up) is reported apart; the median of the following
iterations is the measurement.
"""

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flops
import instructjax as ij
import op_profile
from instructjax import datasets
from instructjax.data import render
from instructjax.rewards.io import export_reward_model
from instructjax.rewards.scoring import reward_params_from_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("generate_s", "score_s", "update_s", "total_s")


def prompt_rows(tokenizer, rows, length):
    """`rows` prompts of exactly `length` real tokens (no padding on either side): each shipped prompt in
    ChatML, preceded by the ones before it and cut from the left."""
    records = [json.loads(line) for line in open(os.path.join(datasets.EXAMPLES_DIR, "prompts.jsonl"))]
    rendered = [render.prompt_ids(tokenizer, r["prompt"], True) for r in records]
    out = []
    for i in range(rows):
        ids, j = [], i
        while len(ids) < length:
            ids, j = rendered[j % len(rendered)] + ids, j - 1
        out.append(ids[-length:])
    return out


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def ours(args, cfg, params, reward_params, tokens, mask, eos_id, pad_id, profile=None):
    """Per-iteration seconds of sample -> score -> update (the steps of `train_ppo`); with an
    `op_profile.OpProfile`, one more iteration with each phase profiled (not timed)."""
    tx = optax.adam(1e-6, b1=0.9, b2=0.95)
    if args.value == "shared":
        value_cfg, value_tx = None, None
        state = ij.train.init_ppo_state(ij.rl.add_value_head(cfg, params, jax.random.key(1)), None, tx, None, 0.02)
    else:
        value_cfg, value_tx = cfg, tx
        state = ij.train.init_ppo_state(params, reward_params, tx, tx, 0.02)
    ref_cfg, ref = ij.rl.frozen_model(cfg, params, args.dtype)
    rm_cfg, rm = ij.rl.frozen_model(cfg, reward_params, args.dtype)
    ref, rm = jax.device_put((ref, rm))
    settings = ij.rl.SamplingSettings(max_new_tokens=args.new_tokens, eos_id=eos_id, pad_id=pad_id, ignore_eos=True)
    score = jax.jit(ij.rl.make_scorer(ref_cfg, ij.rl.reward_model_fn(rm_cfg), temperature=1.0))
    config = ij.train.PPOConfig(num_minibatches=args.minibatches, vf_coef=0.1 if args.value == "shared" else 1.0)
    update = jax.jit(ij.train.make_ppo_update(cfg, value_cfg, tx, value_tx, config), donate_argnums=0)

    def iteration(i, phase):
        nonlocal state
        with phase("generation"):
            out, t_gen = timed(lambda: ij.rl.sample_responses(cfg, state.policy.params, tokens, mask,
                                                              rng=jax.random.key(i), settings=settings))
        with phase("reference and reward"):
            batch, t_score = timed(lambda: score(ref, rm, out))
        with phase("update"):
            (state, _, _), t_update = timed(lambda: update(state, batch, None, jax.random.key(i)))
        return dict(zip(PHASES, (t_gen, t_score, t_update, t_gen + t_score + t_update)))

    results = []
    for i in range(args.iterations):
        results.append(iteration(i, lambda name: contextlib.nullcontext()))
        print(f"instructjax iteration {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()), flush=True)
    if profile:
        iteration(args.iterations, profile.phase)
    return results


def theirs(args, cfg, params, reward_params, tokenizer, prompt_ids, tmp):
    """Per-iteration seconds of TRL's PPOTrainer on the same models and prompts (a .venv-trl112 subprocess)."""
    policy_dir, reward_dir, prompts = (os.path.join(tmp, name) for name in ("policy", "reward", "prompts.json"))
    ij.checkpoints.save_hf(policy_dir, cfg, params, tokenizer=tokenizer)
    export_reward_model(reward_dir, cfg, reward_params, tokenizer)
    with open(prompts, "w") as f:
        json.dump(prompt_ids, f)
    cmd = [args.trl_python, os.path.join(REPO, "benchmarks", "ppo_trl.py"), "--policy", policy_dir,
           "--reward", reward_dir, "--prompts", prompts, "--new-tokens", str(args.new_tokens),
           "--minibatches", str(args.minibatches), "--iterations", str(args.iterations),
           "--threads", str(args.threads)] + (["--f32-generation"] if args.trl_f32_generation else [])
    env = os.environ | {"TRL_EXPERIMENTAL_SILENCE": "1",
                        "ACCELERATE_MIXED_PRECISION": "bf16" if args.dtype == "bfloat16" else "no"}
    if not args.trl_default_malloc:  # the allocator settings this process runs with (ij.cpu_runtime)
        env |= ij.cpu_runtime.MALLOC_ENVIRONMENT
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for i, r in enumerate(result["iterations"]):
        print(f"TRL iteration {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    return result


def summary(name, results, episodes):
    """Median of the iterations after the first, and episodes/s."""
    steady = results[1:] or results
    median = {k: float(np.median([r[k] for r in steady])) for k in PHASES}
    median["episodes_per_s"] = episodes / median["total_s"]
    print(f"{name:12s} " + "  ".join(f"{k} {median[k]:7.2f}" for k in PHASES) +
          f"  episodes/s {median['episodes_per_s']:.3f}  (first iteration {results[0]['total_s']:.1f} s)")
    return median


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3, help="the first one is warm-up / compilation")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--value", default="separate", choices=("separate", "shared"),
                        help="our value model: a separate network (as TRL) or a head on the policy trunk")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (TRL side)")
    parser.add_argument("--trl-python", default=os.path.join(REPO, ".venv-trl112", "bin", "python"))
    parser.add_argument("--trl-f32-generation", action="store_true", help="TRL generates in f32, as it ships")
    parser.add_argument("--trl-default-malloc", action="store_true",
                        help="TRL without the glibc malloc settings of ij.cpu_runtime (ours keeps them)")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one more iteration of ours: its top XLA ops per phase (op_profile.py)")
    args = parser.parse_args()

    profile = op_profile.OpProfile() if args.profile else None  # before jax's first computation
    ij.train.quiet_library_logs()
    cfg, params, tokenizer = ij.checkpoints.load_default_model()
    cfg = cfg.replace(dtype=args.dtype)
    reward_params = reward_params_from_lm(cfg, params, jax.random.key(1))
    prompt_ids = prompt_rows(tokenizer, args.prompts, args.prompt_len)
    tokens = jnp.asarray(prompt_ids, jnp.int32)
    mask = jnp.ones(tokens.shape, bool)
    print(f"machine: {flops.machine()}; jax {jax.__version__} "
          f"({jax.devices()[0].device_kind}); settings: {json.dumps(vars(args))}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trl = None if args.skip_trl else theirs(args, cfg, params, reward_params, tokenizer, prompt_ids, tmp)
    results = {"instructjax": ours(args, cfg, params, reward_params, tokens, mask, tokenizer.eos_id,
                                   tokenizer.pad_id, profile)}
    if trl is not None:
        print(f"TRL {trl['trl']}, transformers {trl['transformers']}, torch {trl['torch']}; its rollout batches "
              f"(prompt, response tokens): {trl['prompt_and_response_tokens']}, pad id {trl['pad_id']}")
        results["TRL PPO"] = trl["iterations"]
    print(f"\nPPO iteration, {args.prompts} prompts x {args.prompt_len} tokens, {args.new_tokens} new tokens, "
          f"1 epoch, {args.minibatches} minibatches, {args.dtype}; median of {args.iterations - 1} iterations "
          "after the first, seconds:")
    medians = {name: summary(name, r, args.prompts) for name, r in results.items()}
    first, steady = results["instructjax"][0]["total_s"], medians["instructjax"]["total_s"]
    print(f"instructjax compilation (first iteration - median): {first - steady:.1f} s")
    if trl is not None:
        ratio = medians["instructjax"]["episodes_per_s"] / medians["TRL PPO"]["episodes_per_s"]
        print(f"speed-up instructjax / TRL (episodes/s): {ratio:.2f}x")
    flops.print_flop_bound(flops.ppo_iteration_flops(cfg, args.prompts, args.prompt_len, args.new_tokens),
                           args.dtype, medians["instructjax"]["total_s"], medians.get("TRL PPO", {}).get("total_s"))
    if profile:
        profile.print_summary()


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with
    main()
