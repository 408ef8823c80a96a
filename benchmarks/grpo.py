"""One GRPO iteration on SmolLM2-135M: instructjax's PPO trainer with `advantage=grpo` against TRL 1.16's
`GRPOTrainer`, same model, prompts, reward function and settings: TRL first, in a subprocess of this
script (same python and process settings), then ours in this process.

    pip install -e .[test,bench]      # bench: trl==1.16.0, datasets, pandas
    python benchmarks/grpo.py         # full size (= make bench-grpo): 16 prompts x 4 samples, 64 + 64 tokens, bf16
    python benchmarks/grpo.py --prompts 4 --group-size 2 --prompt-len 16 --new-tokens 8 --iterations 2  # smoke
    python benchmarks/grpo.py --skip-trl --profile   # ours, then where each phase's time goes (top XLA ops)

Ours: the pieces `train_ppo` runs per iteration (experiments/configs/grpo.py): the compiled sampler on
the prompts repeated `--group-size` times, the reward function on the host (decoded responses), the
scorer jit (reference log-probs), then the PPO update jit with `PPOConfig(advantage="grpo",
group_size=G, kl_in_loss=True, kl_kind="k3")` (beta 0.04), ONE minibatch of `--microbatches`
accumulated microbatches, so one optimizer step per iteration. Theirs: `GRPOTrainer(num_generations=G,
max_completion_length=N, beta=0.04, per_device_train_batch_size=prompts x G / microbatches,
gradient_accumulation_steps=steps_per_generation=microbatches, num_iterations=1)`: one generation
batch of all prompts and one optimizer step per iteration (`trainer.train()` with max_steps =
iterations), transformers `generate` (no vLLM). Two microbatches by default: with one, our process
went past the 24 GiB of the project's CPU machine (64 x 128 tokens in one forward + backward).

Matched: the embedded SmolLM2-135M-Instruct (written with `save_hf` for TRL); the same prompt rows of
exactly `--prompt-len` tokens (ChatML, shipped prompts preceded by earlier ones; only rows whose text
re-tokenizes to the same ids are used, so TRL tokenizes them back to the very same ids); the same
reward function (`word_overlap` below, on decoded text); `--new-tokens` forced on both sides (ours
`ignore_eos`, TRL `min_new_tokens`); temperature 1, no top-k / top-p; advantages scaled by the group's
std (TRL `scale_rewards="group"`); the loss a mean over all response tokens of the batch (TRL
`loss_type="dapo"`, one process); k3 KL in the loss with beta 0.04; AdamW (0.9, 0.95), no weight
decay, clip 1.0, lr 1e-6 constant; no dropout. bf16 over float32 master weights: ours
`model.dtype=bfloat16` (policy, sampler) with the reference kept in bf16; TRL `bf16=True` (autocast for
its forwards; its reference has f32 weights under the same autocast) and its `generate` wrapped in bf16
autocast (TRL itself would generate in f32 on CPU: `--trl-f32-generation`). `--threads` torch threads.
No EOS-penalty on our side (TRL has none).

Equal: neither side recomputes the old log-probs with a no-gradient forward. With one optimizer
step per generation (as here) both take them detached from the gradient forward (ours:
`PPOConfig.recomputes_old` is False for one epoch of one minibatch with the KL in the loss,
docs/formulas.md#old-logprobs).

Timing: wall time of each whole iteration (generation, reward, reference, update); the first
iteration (our compilation, TRL's warm-up) is reported apart, the median of the following ones is
the measurement. TRL's iteration time is between consecutive `on_step_end` callbacks (the first from
`on_train_begin`). Then the iteration's matmul FLOPs (generation, reference, one forward + backward; no
reward model, value model or old log-probs forward) at jax's matmul peak of `--dtype` measured at the
end: the least time any implementation on jax's CPU kernels could take, and so the largest speed-up over
TRL it could show.
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import flops
import instructjax as ij
import op_profile
from instructjax.data.render import response_texts
from ppo import prompt_rows

PHASES = ("generate_s", "reward_s", "score_s", "update_s", "total_s")
BETA, LR, BETAS, CLIP = 0.04, 1e-6, (0.9, 0.95), 1.0


def word_overlap(prompts, responses):
    """The reward: the fraction of the response's words that occur in its prompt (0 for an empty one)."""
    scores = []
    for prompt, response in zip(prompts, responses):
        words, seen = response.lower().split(), set(prompt.lower().split())
        scores.append(sum(w in seen for w in words) / len(words) if words else 0.0)
    return scores


def trl_word_overlap(prompts, completions, **kwargs):
    """`word_overlap` as a TRL reward function."""
    return word_overlap(prompts, completions)


def exact_prompt_rows(tokenizer, hf_tokenizer, rows, length):
    """`rows` prompt token rows of exactly `length` tokens whose text tokenizes back to the same ids (so both
    sides see the same tokens), with those texts; rows repeat after the shipped prompts run out."""
    out, texts = [], []
    for ids in prompt_rows(tokenizer, rows * 8, length):
        text = hf_tokenizer.decode(ids, skip_special_tokens=False)
        if hf_tokenizer(text)["input_ids"] == ids:
            out.append(ids)
            texts.append(text)
            if len(out) == rows:
                return out, texts
    raise RuntimeError(f"only {len(out)} of {rows} prompt rows re-tokenize to the same ids")


def optimizer():
    return optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], weight_decay=0.0))


def overlap_reward(args, tokenizer, texts):
    """`word_overlap` of iteration i's decoded samples with their prompts: a `reward(i, out)` for `ours`."""
    def reward(i, out):
        prompts = [t for t in texts[i * args.prompts:(i + 1) * args.prompts] for _ in range(args.group_size)]
        return word_overlap(prompts, response_texts(tokenizer, np.asarray(out.tokens), np.asarray(out.mask)))
    return reward


def ours(args, cfg, params, rows, reward, eos_id, pad_id, profile=None):
    """Per-iteration seconds of sample -> reward function -> reference log-probs -> GRPO update; with an
    `op_profile.OpProfile`, the last iteration's prompts once more with each phase profiled (not timed).

    `rows`: `args.prompts` prompt token rows per iteration; `reward(i, out)`: the reward function's
    scores (one per sample) of iteration i's `SampleOutput`, computed on the host."""
    tx = optimizer()
    state = ij.train.init_ppo_state(params, None, tx, None, BETA)
    ref_cfg, ref = ij.rl.frozen_model(cfg, params, args.dtype)
    ref = jax.device_put(ref)
    settings = ij.rl.SamplingSettings(max_new_tokens=args.new_tokens, temperature=1.0, eos_id=eos_id,
                                      pad_id=pad_id, ignore_eos=True)
    score = jax.jit(ij.rl.make_scorer(ref_cfg, None, temperature=1.0, no_eos_penalty_value=None))
    config = ij.train.PPOConfig(num_minibatches=1, microbatches=args.microbatches, advantage="grpo",
                                group_size=args.group_size, kl_in_loss=True, kl_kind="k3", clip_eps=0.2,
                                temperature=1.0)
    update = jax.jit(ij.train.make_ppo_update(cfg, None, tx, None, config), donate_argnums=0)
    g, results, rewards = args.group_size, [], []

    def iteration(i, phase):
        nonlocal state
        part = slice(i * args.prompts, (i + 1) * args.prompts)
        tokens = jnp.repeat(jnp.asarray(rows[part], jnp.int32), g, axis=0)
        mask = jnp.ones(tokens.shape, bool)
        start = time.perf_counter()
        with phase("generation"):
            out = jax.block_until_ready(ij.rl.sample_responses(cfg, state.policy.params, tokens, mask,
                                                               rng=jax.random.key(i), settings=settings))
        generated = time.perf_counter()
        function_scores = jnp.asarray([reward(i, out)], jnp.float32)
        rewarded = time.perf_counter()
        with phase("reference"):
            batch = jax.block_until_ready(score(ref, None, out, function_scores))
        scored = time.perf_counter()
        with phase("update"):
            state, metrics, _ = jax.block_until_ready(update(state, batch, None, jax.random.key(i)))
        end = time.perf_counter()
        return (dict(zip(PHASES, (generated - start, rewarded - generated, scored - rewarded, end - scored,
                                  end - start))), float(np.mean(function_scores)), metrics)

    for i in range(args.iterations):
        result, reward_mean, metrics = iteration(i, lambda name: contextlib.nullcontext())
        results.append(result)
        rewards.append(reward_mean)
        print(f"instructjax iteration {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()) +
              f"; reward {rewards[-1]:.3f}, loss {float(metrics['loss']):.4f}", flush=True)
    if profile:
        iteration(args.iterations - 1, profile.phase)
    return results, rewards


def theirs(args, export_dir, texts, tmp):
    """Per-iteration seconds (total and generation) of TRL's GRPOTrainer on the same prompts and reward."""
    episodes = args.prompts * args.group_size
    import datasets as hf_datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir, padding_side="left")
    generate, generation = model.generate, []

    def timed_generate(*a, **kw):  # TRL calls the policy's own generate (single process, no wrapper)
        start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=args.dtype == "bfloat16" and not args.trl_f32_generation):
            out = generate(*a, **kw)
        generation.append((time.perf_counter() - start, tuple(out.shape)))
        return out

    model.generate = timed_generate
    marks = []

    class Marks(transformers.TrainerCallback):
        def on_train_begin(self, *_, **__):
            marks.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            marks.append(time.perf_counter())

    config = trl.GRPOConfig(
        output_dir=os.path.join(tmp, "trl"), per_device_train_batch_size=episodes // args.microbatches,
        gradient_accumulation_steps=args.microbatches, steps_per_generation=args.microbatches, num_generations=args.group_size, max_completion_length=args.new_tokens,
        num_iterations=1, beta=BETA, epsilon=0.2, loss_type="dapo", scale_rewards="group", temperature=1.0,
        top_p=1.0, top_k=0, generation_kwargs={"min_new_tokens": args.new_tokens}, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=0.0,
        max_grad_norm=CLIP, max_steps=args.iterations, bf16=args.dtype == "bfloat16", use_cpu=True,
        shuffle_dataset=False, disable_dropout=True, logging_steps=1, save_strategy="no", report_to=[],
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    data = hf_datasets.Dataset.from_dict({"prompt": texts[:args.prompts * args.iterations]})
    trainer = trl.GRPOTrainer(model=model, reward_funcs=trl_word_overlap, args=config, train_dataset=data,
                              processing_class=tokenizer, callbacks=[Marks()])
    trainer.train()
    totals = np.diff(marks).tolist()
    results = [{"generate_s": gen, "total_s": total} for (gen, _), total in zip(generation, totals)]
    for i, r in enumerate(results):
        print(f"TRL iteration {i}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    shapes = sorted({shape for _, shape in generation})
    print(f"TRL {trl.__version__}: generate output shapes (rows, prompt + new tokens) {shapes}; rewards "
          + ", ".join(f"{r:.3f}" for r in rewards), flush=True)
    return results, rewards


def summary(name, results, episodes):
    steady = results[1:] or results
    median = {k: float(np.median([r[k] for r in steady])) for k in results[0]}
    print(f"{name:12s} " + "  ".join(f"{k} {v:7.2f}" for k, v in median.items()) +
          f"  episodes/s {episodes / median['total_s']:.3f}  (first iteration {results[0]['total_s']:.1f} s; "
          f"iterations {', '.join('%.2f' % r['total_s'] for r in results)})")
    return median


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt (TRL num_generations)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=2,
                        help="gradient accumulation inside the one optimizer step (TRL gradient_accumulation_steps)")
    parser.add_argument("--iterations", type=int, default=4, help="the first one is warm-up / compilation")
    parser.add_argument("--trl-f32-generation", action="store_true", help="TRL generates in f32, as it ships")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one more iteration of ours: its top XLA ops per phase (op_profile.py)")
    flops.add_competitor_arguments(parser)
    args = parser.parse_args()
    profile = op_profile.OpProfile() if args.profile and not args.competitor_only else None  # before jax starts

    import torch
    import transformers
    ij.train.quiet_library_logs()
    cfg, params, tokenizer = ij.checkpoints.load_default_model()
    cfg = cfg.replace(dtype=args.dtype)
    print(f"machine: {flops.machine()}", flush=True)
    print(f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; settings: {json.dumps(vars(args))}", flush=True)
    episodes = args.prompts * args.group_size
    results = {}
    if not args.skip_trl and not args.competitor_only:  # TRL first, in a process of its own (memory)
        argv = [a for a in sys.argv[1:]]
        results["TRL GRPO"] = flops.competitor_in_subprocess(os.path.abspath(__file__), argv)
        print(f"machine between the sides: {flops.machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = os.path.join(tmp, "hf")
        ij.checkpoints.save_hf(export_dir, cfg, params, tokenizer=tokenizer)
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
        rows, texts = exact_prompt_rows(tokenizer, hf_tokenizer, args.prompts * args.iterations, args.prompt_len)
        if args.competitor_only:
            with open(args.result_file, "w") as f:
                json.dump(theirs(args, export_dir, texts, tmp), f)
            return
        reward = overlap_reward(args, tokenizer, texts)
        results = {"instructjax": ours(args, cfg, params, rows, reward, tokenizer.eos_id, tokenizer.pad_id,
                                       profile)} | results
    print(f"\nGRPO iteration, {args.prompts} prompts x {args.group_size} samples, {args.prompt_len} prompt tokens, "
          f"{args.new_tokens} new tokens, one optimizer step ({args.microbatches} microbatches), {args.dtype}; median of {args.iterations - 1} "
          "iterations after the first, seconds:")
    medians = {name: summary(name, r, episodes) for name, (r, _) in results.items()}
    ours_first = results["instructjax"][0][0]["total_s"]
    print(f"instructjax compilation (first iteration - median): {ours_first - medians['instructjax']['total_s']:.1f} s")
    if "TRL GRPO" in medians:
        print(f"speed-up instructjax / TRL (iteration time): "
              f"{medians['TRL GRPO']['total_s'] / medians['instructjax']['total_s']:.2f}x "
              f"(generation {medians['TRL GRPO']['generate_s'] / medians['instructjax']['generate_s']:.2f}x)")
    parts = flops.ppo_iteration_flops(cfg, episodes, args.prompt_len, args.new_tokens, reward_model=False,
                                      values=False, recompute=False)  # a reward function, one optimizer step
    flops.print_flop_bound(parts, args.dtype, medians["instructjax"]["total_s"],
                           medians.get("TRL GRPO", {}).get("total_s"))
    print(f"machine after: {flops.machine()}")
    if profile:
        profile.print_summary()


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with (TRL in this process too)
    main()
