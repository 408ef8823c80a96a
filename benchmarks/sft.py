"""SFT throughput on SmolLM2-135M: instructjax's `train_sft` against TRL's `SFTTrainer`, same weights,
token rows, batch (8 x 256) and `--dtype` compute (bf16 by default) over float32 master weights; plus
our model FLOPs utilisation against the matmul peak of that dtype measured here.

    pip install -e .[bench]        # trl, datasets, pandas (+ torch, transformers from [test])
    python benchmarks/sft.py [--steps 5 --batch 8 --length 256] [--dtype float32] [--skip-trl]

On a CPU without native bf16 (flops.machine() says which) bf16 runs slower than float32 on both sides,
and torch's bf16 matmul peak alone takes minutes there: use `--dtype float32`.

Data: the shipped demonstrations, each response extended with other shipped responses until the
example (ChatML prompt + response + EOS, SmolLM2 tokenizer) nearly fills `--length` tokens. Our
pipeline tokenizes them; TRL gets the very same rows pre-tokenized (`input_ids` +
`completion_mask`: loss on the response and EOS on both sides). Timing: wall time between the
ends of consecutive optimizer steps (data, step and logging included), the first step (compile /
warm-up) excluded on both sides, the median step reported (other jobs on a shared machine cause
outliers); tokens are real (non-padding) tokens.
"""

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

import flops
import instructjax as ij
from instructjax import datasets
from instructjax.data import render
from instructjax.testing.experiments import load_experiment_config



def matmul_peaks(dtype, n=2048, repeats=10):
    """GFLOP/s of an n^3 matmul of `dtype` operands: jax (f32 accumulation) and torch."""
    import torch
    t = torch.from_numpy(np.random.default_rng(0).normal(size=(n, n))).to(getattr(torch, dtype))
    torch.mm(t, t)
    return {"jax": flops.jax_matmul_peak(dtype, n, repeats),
            "torch": 2 * n ** 3 / 1e9 / flops.best_of(lambda: torch.mm(t, t), repeats)}


def long_demonstrations(tok, rows, length):
    """`rows` demonstrations of nearly `length` tokens: shipped prompts, responses extended with others."""
    examples = [json.loads(line) for line in open(os.path.join(datasets.EXAMPLES_DIR, "demonstrations.jsonl"))]
    out = []
    for i in range(rows):
        record = examples[i % len(examples)]
        budget = length - len(render.prompt_ids(tok, record["prompt"], True)) - 1  # EOS
        response, j = record["response"], i
        while True:
            j += 1
            longer = response + " " + examples[j % len(examples)]["response"]
            if len(tok.encode(longer)) > budget:
                break
            response = longer
        out.append({"prompt": record["prompt"], "response": response})
    return out


def token_rows(built, tok, length, batch):
    """The rows our SFT pipeline makes of the train split: (input_ids, completion_mask) lists."""
    loader = ij.data.sft_loader(built.source("train"), tok, ij.data.SFTConfig(max_len=length),
                                ij.data.LoaderConfig(batch_size=batch, shuffle=False, num_epochs=1))
    rows = []
    for b in loader:
        for tokens, mask, loss in zip(b["tokens"], b["attention_mask"], b["loss_mask"]):
            if mask.any():
                rows.append((tokens[mask].tolist(), loss[mask].astype(int).tolist()))
    return rows


def ours(args, jsonl, tmp):
    """tokens/s and step seconds of `train_sft` (smollm2 preset, `--dtype` compute, f32 params), from its metrics."""
    config = load_experiment_config("sft", "smollm2")
    config.model.dtype = args.dtype
    config.num_steps, config.num_epochs = args.steps + 1, 0.0
    config.batch_size, config.microbatches = args.batch, 1
    config.model.dropout_rate = 0.0  # TRL's Llama has no dropout
    config.data.train_files, config.data.validation_fraction = (jsonl,), 0.0
    config.data.max_len = args.length
    config.eval.every_steps, config.export = 0, False
    config.checkpoint.every_steps = 10 ** 6  # only the final one, after the timed steps
    config.parallel.mesh_shape = (1, 1, 1)
    workdir = os.path.join(tmp, "ours")
    ij.train.train_sft(config, workdir)
    records = [r for r in ij.train.read_metrics(ij.train.Workdir.at(workdir).metrics_file) if "train/loss" in r]
    timed = records[1:]
    return {"step_times": [1.0 / r["perf/steps_per_s"] for r in timed],
            "tokens_per_step": float(np.mean([r["train/tokens"] for r in timed])),
            "first_step_s": records[0]["perf/first_step_s"], "loss": [r["train/loss"] for r in records]}


def theirs(args, export_dir, rows, tmp):
    """tokens/s and step seconds of TRL's SFTTrainer on the same rows (bf16 autocast with bfloat16, f32 params)."""
    import datasets as hf_datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(os.cpu_count())
    model = transformers.AutoModelForCausalLM.from_pretrained(export_dir, torch_dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
    data = hf_datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "completion_mask": [r[1] for r in rows]})
    ends = []

    class StepTimes(transformers.TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    config = trl.SFTConfig(
        output_dir=os.path.join(tmp, "trl"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_length=args.length, bf16=args.dtype == "bfloat16", use_cpu=True, max_steps=args.steps + 1,
        learning_rate=9.65e-6, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta2=0.95,
        logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0, completion_only_loss=True,
        seed=0)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                             callbacks=[StepTimes()])
    trainer.train()
    tokens_per_step = float(np.mean([len(r[0]) for r in rows])) * args.batch
    return {"step_times": np.diff(ends).tolist(), "tokens_per_step": tokens_per_step,
            "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="compute dtype of both sides")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()

    import torch
    import transformers
    ij.train.quiet_library_logs()
    cfg, params, tok = ij.checkpoints.load_default_model()
    peaks = matmul_peaks(args.dtype)
    print(f"machine: {flops.machine()}; python "
          f"{platform.python_version()}, jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"{args.dtype} matmul 2048^3: " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in peaks.items()))

    with tempfile.TemporaryDirectory() as tmp:
        jsonl, built = flops.built_dataset(
            "demonstrations", long_demonstrations(tok, args.batch * (args.steps + 1), args.length), tmp)
        rows = token_rows(built, tok, args.length, args.batch)
        fill = np.mean([len(r[0]) for r in rows]) / args.length
        print(f"data: {len(rows)} rows of {args.length} tokens, {fill:.0%} real tokens, batch {args.batch}")

        results = {"instructjax": ours(args, jsonl, tmp)}
        if not args.skip_trl:
            export_dir = os.path.join(tmp, "hf")
            ij.checkpoints.save_hf(export_dir, cfg, params, tokenizer=tok)
            import trl
            print(f"trl {trl.__version__}")
            results["TRL SFTTrainer"] = theirs(args, export_dir, rows, tmp)

    step_flops = flops.train_flops_per_token(cfg, args.length) * args.batch * args.length
    print(f"\nSFT step, batch {args.batch} x {args.length}, {args.dtype} compute / f32 params; "
          f"median of {args.steps} steps after a warm-up step (model FLOPs {step_flops / 1e12:.2f} TFLOP per step)")
    speed = {}
    for name, r in results.items():
        step_s = float(np.median(r["step_times"]))
        speed[name] = r["tokens_per_step"] / step_s
        gflops = step_flops / step_s / 1e9
        print(f"{name:16s} {step_s:6.2f} s/step  {speed[name]:7.1f} real tok/s  {gflops:5.0f} GFLOP/s  "
              f"MFU {gflops / peaks['jax']:.1%} of jax's {args.dtype} peak, {gflops / peaks['torch']:.1%} of torch's")
        print(f"{'':16s} step times {', '.join(f'{x:.2f}' for x in r['step_times'])} s")
        print(f"{'':16s} losses {', '.join(f'{x:.3f}' for x in r['loss'])}")
    print(f"instructjax first step (compile included): {results['instructjax']['first_step_s']:.1f} s")
    if "TRL SFTTrainer" in speed:
        print(f"speed-up instructjax / TRL: {speed['instructjax'] / speed['TRL SFTTrainer']:.2f}x")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with
    main()
