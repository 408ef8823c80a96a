"""Throughput of the data layer with the real SmolLM2 tokenizer, against the SFT step it feeds.

Builds demonstrations and comparisons (the shipped examples, repeated with numbered prompts) into
ArrayRecord with TFDS, then times one epoch of each pipeline: records/s and real tokens/s. With
--step it also times a jitted SFT forward + backward of SmolLM2-135M on one batch, to show
whether the pipeline or the step is the bottleneck.

    python benchmarks/data.py [--records 4000 --batch 8 --max-len 256 --threads 2 --step]
"""

import argparse
import json
import os
import platform
import tempfile
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

import flops
import instructjax as ij
from instructjax import data, datasets
from instructjax.checkpoints import default_model_path
from instructjax.tokenizers import Tokenizer


def write_jsonl(kind, n, path):
    """`n` records of `kind`: the shipped examples over and over, each prompt numbered."""
    examples = [json.loads(line) for line in open(os.path.join(datasets.EXAMPLES_DIR, f"{kind}.jsonl"))]
    with open(path, "w") as f:
        for i in range(n):
            record = dict(examples[i % len(examples)])
            prompt = record["prompt"]
            record["prompt"] = f"{i}. {prompt}" if isinstance(prompt, str) else \
                prompt[:-1] + [{**prompt[-1], "content": f"{i}. {prompt[-1]['content']}"}]
            f.write(json.dumps(record) + "\n")
    return path


def time_epoch(loader):
    """(seconds, records read, real tokens) of one pass, from iter() to the last batch."""
    start = time.perf_counter()
    it = iter(loader)
    tokens = sum(int(np.asarray(batch["attention_mask"]).sum()) for batch in it)
    seconds = time.perf_counter() - start
    it.close()
    return seconds, it.stats["records"], tokens


def sft_step_seconds(batch, repeats):
    """Best time of a jitted forward + backward (masked token cross-entropy) of SmolLM2-135M."""
    cfg, params, _ = ij.checkpoints.load_default_model()
    model = ij.models.Transformer(cfg)

    def loss(p, b):
        logits = model.apply({"params": p}, b["tokens"], b["positions"], b["attention_mask"],
                             segment_ids=b["segment_ids"])
        logp = jax.nn.log_softmax(logits[:, :-1])
        nll = -jnp.take_along_axis(logp, b["tokens"][:, 1:, None], -1)[..., 0]
        mask = b["loss_mask"][:, 1:]
        return (nll * mask).sum() / mask.sum()

    step = jax.jit(jax.value_and_grad(loss))
    jax.block_until_ready(step(params, batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, batch))
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", action="store_true", help="also time an SFT forward + backward of SmolLM2-135M")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tfds.disable_progress_bar()
    tok = Tokenizer.from_gguf(default_model_path())
    print(f"# {flops.machine()}; python {platform.python_version()}, "
          f"jax {jax.__version__}, grain {grain.__version__}, "
          f"tfds {tfds.__version__}; tokenizer {tok.source}")
    loader_config = data.LoaderConfig(batch_size=args.batch, num_epochs=1, num_threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        built = {}
        for kind in ("demonstrations", "comparisons"):
            path = write_jsonl(kind, args.records, os.path.join(tmp, f"{kind}.jsonl"))
            start = time.perf_counter()
            built[kind] = datasets.build(datasets.DatasetConfig(kind, (path,)), os.path.join(tmp, "data"))
            seconds = time.perf_counter() - start
            print(f"build {kind:15s} {args.records / seconds:9.0f} records/s ({args.records} records, {seconds:.2f} s)")

        loaders = {
            "sft": data.sft_loader(built["demonstrations"].source(), tok, data.SFTConfig(max_len=args.max_len),
                                   loader_config),
            "sft packed": data.sft_loader(built["demonstrations"].source(), tok,
                                          data.SFTConfig(max_len=args.max_len, pack=True), loader_config),
            "comparisons": data.comparison_loader(built["comparisons"].source(), tok,
                                                  data.ComparisonConfig(max_len=args.max_len, max_completions=5),
                                                  loader_config),
        }
        for name, loader in loaders.items():
            seconds, records, tokens = time_epoch(loader)
            print(f"{name:21s} {records / seconds:9.0f} records/s {tokens / seconds:11.0f} tokens/s "
                  f"({records} records, {seconds:.2f} s)")

        if args.step:
            batch = next(iter(loaders["sft packed"]))
            tokens = int(batch["attention_mask"].sum())
            step = sft_step_seconds(batch, args.repeats)
            print(f"SFT step (SmolLM2-135M f32, fwd+bwd, {args.batch}x{args.max_len} packed): {step:.2f} s = "
                  f"{tokens / step:.0f} tokens/s")


if __name__ == "__main__":
    ij.cpu_runtime.apply()  # the XLA:CPU settings every measurement here runs with
    main()
