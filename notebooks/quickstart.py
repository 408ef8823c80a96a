# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # instructjax quickstart: the InstructGPT pipeline end to end
#
# This notebook runs the whole InstructGPT recipe (Ouyang et al. 2022) on the `tiny` preset:
# task prompts with verifiable constraints, demonstrations by rejection sampling, SFT, comparisons
# ranked by the labeler, a reward model, PPO-ptx, and the evaluation report. The `tiny` preset uses a
# random tiny model so that it runs in about two minutes on 2 CPU cores; `quick` runs the same on the real
# SmolLM2-135M-Instruct (`make demo`).
#
# **Colab / TPU / GPU.** Install from a clone of the repository (first cell). JAX uses the
# accelerator it finds: on a Colab TPU or GPU runtime install the matching jax build first
# (`pip install -U "jax[tpu]"` or `"jax[cuda12]"`); nothing else changes. On a CPU,
# `ij.cpu_runtime.apply()` before the first jax computation makes the steps faster (an XLA flag and
# glibc malloc settings; the scripts in `experiments/` call it for you).

# %%
# On Colab, uncomment:
# !git clone https://github.com/<you>/instructjax && pip install -q -e instructjax

# %%
import json
import pathlib
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

import instructjax as ij
from instructjax.testing.experiments import load_experiment_config

ij.cpu_runtime.apply()  # XLA:CPU settings, before any jax computation (does nothing on a GPU/TPU runtime)
print(jax.devices())

# %% [markdown]
# ## The task and the labeler
# Each prompt combines an everyday request with one or two checkable constraints; the
# programmatic labeler ranks completions by the constraints they meet, then by a quality check.

# %%
prompts = ij.tasks.make_prompts("train", 3, seed=0)
for p in prompts:
    print("-", p.prompt)
labeler = ij.labelers.ConstraintLabeler(prompts)
print(labeler.rank(prompts[0].prompt, ['"A quoted answer about the topic."', "An answer without quotes."]))

# %% [markdown]
# ## Run the pipeline
# `experiments/configs/pipeline.py:tiny`; every stage writes a subfolder of the workdir, and
# rerunning skips finished stages.

# %%
config = load_experiment_config("pipeline", "tiny")
workdir = pathlib.Path(tempfile.mkdtemp()) / "pipeline"
summaries = ij.pipeline.run_pipeline(config, workdir)
print(sorted(p.name for p in workdir.iterdir()))

# %% [markdown]
# ## Results

# %%
evaluation = summaries["evaluation"]
for name, result in evaluation["models"].items():
    test = result["test"]
    overall, heldout = test["pass_rates"]["overall"], result["heldout"]["pass_rates"]["overall"]
    print(f"{name:8s} pass rate {100 * overall['value']:5.1f}%  held-out families {100 * heldout['value']:5.1f}%  "
          f"reward {test['reward'][0]:+.3f}  length {test['length']:.1f}  perplexity {result['perplexity']:.1f}")
print("reward model held-out accuracy:", evaluation["reward_model"].get("accuracy"))
display(Image(filename=str(workdir / "report_pass_rates.png")))
display(Image(filename=str(workdir / "report_ppo.png")))

# %%
ppo = [r for r in map(json.loads, open(workdir / "ppo" / "metrics.jsonl")) if "train/kl" in r]  # not eval/
plt.plot([r["step"] for r in ppo], [r["train/kl"] for r in ppo], marker="o")
plt.xlabel("PPO iteration")
plt.ylabel("KL to SFT (nats)")
plt.show()

# %%
display(Markdown((workdir / "report.md").read_text()[:1500]))

# %% [markdown]
# ## Chat with the PPO policy
# The final policy is exported in Hugging Face format (`ppo/export`); `experiments/chat.py
# --checkpoint=WORKDIR/ppo/export` opens a streaming chat in the terminal. Here, one answer:

# %%
cfg, params = ij.checkpoints.load_hf(workdir / "ppo" / "export")
tokenizer = ij.tokenizers.Tokenizer.from_pretrained(workdir / "ppo" / "export")
prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello in lowercase."}],
                                       add_generation_prompt=True)
ids, mask = tokenizer.encode_batch([prompt])
out = ij.sampling.generate(cfg, params, ids, mask, rng=jax.random.key(0), max_new_tokens=24, temperature=0.0,
                           eos_id=tokenizer.eos_id)
print(tokenizer.decode(np.asarray(out.tokens[0])[np.asarray(out.mask[0])].tolist()))
