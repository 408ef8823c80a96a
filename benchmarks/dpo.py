"""One DPO step on SmolLM2-135M: instructjax's `train_dpo` against TRL 1.16's `DPOTrainer`, same weights,
token rows, batch (8 pairs, rows of up to 256 tokens) and settings: TRL first, in a subprocess of this
script (same python and process settings), then ours in this process.

    pip install -e .[test,bench]      # bench: trl==1.16.0, datasets, pandas
    python benchmarks/dpo.py          # full size (= make bench-dpo): --steps 5 --batch 8 --length 256, bf16
    python benchmarks/dpo.py --steps 2 --batch 2 --length 64        # smoke size
    python benchmarks/dpo.py --dtype float32 --microbatches 2       # float32 (CPUs without native bf16)

Data: the shipped prompts of the demonstrations (ChatML), each with a chosen and a rejected
completion made of shipped responses strung together until prompt + completion + EOS nearly fills
`--length` tokens (two different strings of responses). Our pipeline tokenizes them (comparisons,
K = 2); TRL gets the very same token ids (`prompt_ids`, `chosen_ids`, `rejected_ids`, its own
tokenization skipped), so both forward the same 2 x batch rows.

Settings on both sides: sigmoid DPO loss, beta 0.1; bf16 compute over float32 master weights (ours
`model.dtype=bfloat16`, TRL `bf16=True`, autocast); AdamW (0.9, 0.95), no weight decay, clip 1.0, lr
1e-6 constant; no dropout. Reference log-probs precomputed before training on both sides and not in
the step: ours are computed once with the initial model and cached (WORKDIR/reference/), TRL gets
`precompute_ref_log_probs=True` (a pass over the dataset in `DPOTrainer.__init__`, same batch size).

Ours is the whole `train_dpo` loop (grain loader, step, metrics), TRL's the whole `trainer.train()`.
Timing as benchmarks/sft.py: wall time between the ends of consecutive optimizer steps, the first
step (compilation / warm-up) excluded on both sides, the median step reported.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

import flops
import instructjax as ij
from instructjax import datasets
from instructjax.data import render
from instructjax.testing.experiments import load_experiment_config

BETA, LR, BETAS, CLIP = 0.1, 1e-6, (0.9, 0.95), 1.0


def comparisons(tok, rows, length):
    """`rows` comparison records of a shipped prompt and two completions that each nearly fill `length` tokens."""
    examples = [json.loads(line) for line in open(os.path.join(datasets.EXAMPLES_DIR, "demonstrations.jsonl"))]

    def fill(budget, j):
        response = examples[j % len(examples)]["response"]
        while True:
            j += 1
            longer = response + " " + examples[j % len(examples)]["response"]
            if len(tok.encode(longer)) > budget:
                return response
            response = longer

    out = []
    for i in range(rows):
        prompt = examples[i % len(examples)]["prompt"]
        budget = length - len(render.prompt_ids(tok, prompt, True)) - 1  # EOS
        chosen, rejected = fill(budget, i), fill(budget, i + len(examples) // 2)
        out.append({"prompt": prompt, "completions": [chosen, rejected], "ranking": [0, 1]})
    return out


def token_rows(built, tok, length, batch):
    """The (prompt_ids, chosen_ids, rejected_ids) of every record as our comparison pipeline makes them."""
    loader = ij.data.comparison_loader(built.source("train"), tok,
                                       ij.data.ComparisonConfig(max_len=length, max_completions=2),
                                       ij.data.LoaderConfig(batch_size=batch, shuffle=False, num_epochs=1))
    rows = []
    for b in loader:
        for tokens, attention, response, ranks, valid in zip(b["tokens"], b["attention_mask"], b["response_mask"],
                                                              b["ranks"], b["valid"]):
            if not valid.all():
                continue
            prompts = [t[a & ~r].tolist() for t, a, r in zip(tokens, attention, response)]
            assert prompts[0] == prompts[1], "chosen and rejected rows differ in their prompt"
            chosen, rejected = (tokens[k][response[k]].tolist() for k in np.argsort(ranks))
            rows.append((prompts[0], chosen, rejected))
    return rows


def ours(args, jsonl, tmp):
    """Step seconds of `train_dpo` (bf16 compute, f32 params), from its metrics."""
    config = load_experiment_config("dpo", "tiny")
    config.init.source = "default"  # the embedded SmolLM2-135M-Instruct
    config.model.dtype = args.dtype
    config.model.dropout_rate = 0.0
    config.num_steps, config.num_epochs = args.steps + 1, 0.0
    config.batch_size, config.microbatches = args.batch, args.microbatches
    config.loss, config.beta = "dpo", BETA
    config.optim.lr, config.optim.schedule, config.optim.warmup_steps = LR, "constant", 0
    config.optim.b1, config.optim.b2, config.optim.weight_decay, config.optim.clip_norm = *BETAS, 0.0, CLIP
    config.data.train_files, config.data.validation_fraction = (jsonl,), 0.0
    config.data.max_len, config.data.max_completions = args.length, 2
    config.eval.every_steps, config.eval.batch_size, config.export = 0, args.batch, False
    config.checkpoint.every_steps = 10 ** 6  # only the final one, after the timed steps
    config.parallel.mesh_shape = (1, 1, 1)
    workdir = os.path.join(tmp, "ours")
    ij.train.train_dpo(config, workdir)
    records = [r for r in ij.train.read_metrics(ij.train.Workdir.at(workdir).metrics_file) if "train/loss" in r]
    return {"step_times": [1.0 / r["perf/steps_per_s"] for r in records[1:]],
            "first_step_s": records[0]["perf/first_step_s"], "loss": [r["train/loss"] for r in records]}


def theirs(args, export_dir, rows, tmp):
    """Step seconds of TRL's DPOTrainer on the same token rows (bf16 autocast, f32 params)."""
    import datasets as hf_datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
    data = hf_datasets.Dataset.from_dict({"prompt_ids": [r[0] for r in rows], "chosen_ids": [r[1] for r in rows],
                                          "rejected_ids": [r[2] for r in rows]})
    ends = []

    class StepTimes(transformers.TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    class PreTokenized(trl.DPOTrainer):
        """TRL's trainer on rows tokenized already (ours): its text tokenization skipped."""

        def _prepare_dataset(self, dataset, *_, **__):
            return dataset

    config = trl.DPOConfig(
        output_dir=os.path.join(tmp, "trl"), per_device_train_batch_size=args.batch // args.microbatches,
        gradient_accumulation_steps=args.microbatches,
        max_length=args.length, loss_type=["sigmoid"], beta=BETA, precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.batch, bf16=args.dtype == "bfloat16", use_cpu=True, max_steps=args.steps + 1,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=BETAS[0], adam_beta2=BETAS[1],
        weight_decay=0.0, max_grad_norm=CLIP, logging_steps=1, save_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True, seed=0)
    start = time.perf_counter()
    trainer = PreTokenized(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                           callbacks=[StepTimes()])
    setup_s = time.perf_counter() - start
    trainer.train()
    return {"step_times": np.diff(ends).tolist(), "setup_s": setup_s,
            "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--length", type=int, default=256, help="tokens per row (prompt + completion + EOS)")
    parser.add_argument("--microbatches", type=int, default=1,
                        help="gradient accumulation inside the step (TRL gradient_accumulation_steps); with 1, "
                             "float32 at full size went past 24 GiB")
    flops.add_competitor_arguments(parser)
    args = parser.parse_args()
    if args.batch % args.microbatches:
        parser.error(f"--batch {args.batch} does not split into --microbatches {args.microbatches}")

    import torch
    import transformers
    ij.train.quiet_library_logs()
    cfg, params, tok = ij.checkpoints.load_default_model()
    print(f"machine: {flops.machine()}", flush=True)
    print(f"python {platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; settings: {json.dumps(vars(args))}", flush=True)

    results = {}
    if not args.skip_trl and not args.competitor_only:  # TRL first, in a process of its own (memory)
        results["TRL DPOTrainer"] = flops.competitor_in_subprocess(os.path.abspath(__file__), sys.argv[1:])
        print(f"TRL step times {', '.join(f'{x:.2f}' for x in results['TRL DPOTrainer']['step_times'])} s; "
              f"machine between the sides: {flops.machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl, built = flops.built_dataset("comparisons", comparisons(tok, args.batch * (args.steps + 1), args.length),
                                           tmp)
        rows = token_rows(built, tok, args.length, args.batch)
        lengths = [len(p) + len(c) for p, c, _ in rows] + [len(p) + len(r) for p, _, r in rows]
        print(f"data: {len(rows)} pairs, rows of {min(lengths)}-{max(lengths)} tokens (mean "
              f"{np.mean(lengths) / args.length:.0%} of {args.length}), batch {args.batch} pairs = "
              f"{2 * args.batch} rows", flush=True)

        if args.competitor_only:
            export_dir = os.path.join(tmp, "hf")
            ij.checkpoints.save_hf(export_dir, cfg, params, tokenizer=tok)
            import trl
            print(f"trl {trl.__version__}", flush=True)
            with open(args.result_file, "w") as f:
                json.dump(theirs(args, export_dir, rows, tmp), f)
            return
        results = {"instructjax": ours(args, jsonl, tmp)} | results

    step_flops = flops.train_flops_per_token(cfg, args.length) * 2 * args.batch * args.length
    print(f"\nDPO step, {args.batch} pairs x {args.length} tokens in {args.microbatches} microbatch(es), "
          f"{args.dtype} compute / f32 params, reference "
          f"log-probs precomputed; median of {args.steps} steps after a warm-up step (model FLOPs of "
          f"{2 * args.batch} full rows {step_flops / 1e12:.2f} TFLOP per step)")
    medians = {}
    for name, r in results.items():
        medians[name] = float(np.median(r["step_times"]))
        print(f"{name:16s} {medians[name]:6.2f} s/step  ({step_flops / medians[name] / 1e9:5.0f} GFLOP/s)")
        print(f"{'':16s} step times {', '.join(f'{x:.2f}' for x in r['step_times'])} s")
        print(f"{'':16s} losses {', '.join(f'{x:.4f}' for x in r['loss'])}")
    print(f"instructjax first step (compile included): {results['instructjax']['first_step_s']:.1f} s")
    if "TRL DPOTrainer" in medians:
        print(f"TRL set-up (reference pass included): {results['TRL DPOTrainer']['setup_s']:.1f} s")
        print(f"speed-up instructjax / TRL: {medians['TRL DPOTrainer'] / medians['instructjax']:.2f}x")
    print(f"machine after: {flops.machine()}")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with (TRL in this process too)
    main()
