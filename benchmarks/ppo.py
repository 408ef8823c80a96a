"""One PPO iteration on SmolLM2-135M, broken down into generation, scoring and update seconds.

    python benchmarks/ppo.py [--prompts 64 --prompt-len 64 --new-tokens 64 --minibatches 4 --dtype bfloat16]

Settings of the issue: 64 prompts of 64 tokens (the shipped prompts in ChatML, left-padded or cut
from the left), 64 new tokens forced (EOS ignored), 1 epoch, 4 minibatches. Policy and reference:
the embedded SmolLM2-135M-Instruct; reward and value models: its trunk with a fresh scalar head
(the same sizes as a trained RM). The first iteration (compilation) is reported separately; the
median of the following iterations is the measurement.

Not done yet: the TRL side (TRL's PPO trainer exists only in trl==1.12.0, `trl.experimental.ppo`,
which needs its own virtualenv; reference figure in ../shared/BENCHMARKS.md: 0.77 episodes/s).
"""

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import instructjax as ij
from instructjax import datasets
from instructjax.data import render
from instructjax.rewards.scoring import reward_params_from_lm


def prompt_batch(tokenizer, rows, length):
    records = [json.loads(line) for line in open(os.path.join(datasets.EXAMPLES_DIR, "prompts.jsonl"))]
    ids = [render.prompt_ids(tokenizer, records[i % len(records)]["prompt"], True)[-length:] for i in range(rows)]
    tokens = np.full((rows, length), tokenizer.pad_id, np.int32)
    mask = np.zeros((rows, length), bool)
    for i, row in enumerate(ids):
        tokens[i, length - len(row):], mask[i, length - len(row):] = row, True
    return jnp.asarray(tokens), jnp.asarray(mask)


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--minibatches", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    cfg, params, tokenizer = ij.checkpoints.load_default_model()
    cfg = cfg.replace(dtype=args.dtype)
    reward_params = reward_params_from_lm(cfg, params, jax.random.key(1))
    tx = optax.adam(1e-6, b1=0.9, b2=0.95)
    state = ij.rl.init_ppo_state(params, reward_params, tx, tx, 0.02)
    ref = jax.device_put(params)
    rm = jax.device_put(reward_params)
    tokens, mask = prompt_batch(tokenizer, args.prompts, args.prompt_len)
    settings = ij.rl.SamplingSettings(max_new_tokens=args.new_tokens, eos_id=tokenizer.eos_id,
                                      pad_id=tokenizer.pad_id, ignore_eos=True)
    score = jax.jit(ij.rl.make_scorer(cfg, ij.rl.reward_model_fn(cfg), temperature=1.0))
    update = jax.jit(ij.rl.make_ppo_update(cfg, cfg, tx, tx, ij.rl.PPOConfig(num_minibatches=args.minibatches)),
                     donate_argnums=0)
    results = []
    for i in range(args.iterations):
        out, t_gen = timed(lambda: ij.rl.sample_responses(cfg, state.policy.params, tokens, mask,
                                                          rng=jax.random.key(i), settings=settings))
        batch, t_score = timed(lambda: score(ref, rm, out))
        (state, metrics, _), t_update = timed(lambda: update(state, batch, None, jax.random.key(i)))
        total = t_gen + t_score + t_update
        results.append({"generate_s": t_gen, "score_s": t_score, "update_s": t_update, "total_s": total,
                        "episodes_per_s": args.prompts / total})
        print(f"iteration {i}{' (compilation included)' if i == 0 else ''}: " +
              ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()), flush=True)
    steady = results[1:] or results
    median = {k: float(np.median([r[k] for r in steady])) for k in steady[0]}
    print(json.dumps({"device": jax.devices()[0].device_kind, "host": platform.processor() or platform.machine(),
                      "settings": vars(args), "first_iteration": results[0], "median": median}, indent=2))


if __name__ == "__main__":
    main()
