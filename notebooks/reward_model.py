# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Train and probe a reward model
#
# InstructGPT's reward model reads a prompt and a completion and outputs a scalar; it is trained on
# the labeler's rankings of K completions per prompt with the pairwise loss over all K-choose-2
# pairs. Here: comparisons from the default task's labeler, a reward model on the `tiny` preset
# (random tiny model, seconds on a CPU), then probes of what it learned.
#
# **Colab / TPU / GPU.** Install from a clone of the repository; JAX uses the accelerator it finds
# (install `jax[tpu]` or `jax[cuda12]` on those runtimes). On a CPU, `ij.cpu_runtime.apply()`
# before the first jax computation makes the steps faster.

# %%
# On Colab, uncomment:
# !git clone https://github.com/<you>/instructjax && pip install -q -e instructjax

# %%
import json
import pathlib
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import instructjax as ij
from instructjax.testing.experiments import load_experiment_config

ij.cpu_runtime.apply()  # XLA:CPU settings, before any jax computation (does nothing on a GPU/TPU runtime)

# %% [markdown]
# ## Comparisons ranked by the labeler
# For each prompt, four candidate answers: some meet the prompt's constraint, some do not.
# The labeler ranks them (0 = best); `rank_to_comparison` makes the JSONL record.

# %%
tmp = pathlib.Path(tempfile.mkdtemp())
prompts = ij.tasks.make_prompts("train", 96, seed=1, families=("lowercase", "uppercase", "quoted"),
                                max_constraints=1)
labeler = ij.labelers.ConstraintLabeler(prompts)


def candidates(p):
    text = f"here is my answer about {p.topic}."
    return [text, text.upper(), f'"{text}"', text.capitalize()]


records = []
for p in prompts:
    completions = ij.labelers.unique_completions(candidates(p))
    record = ij.labelers.rank_to_comparison(p.prompt, completions, labeler.rank(p.prompt, completions))
    if record is not None:
        records.append(record)
path = tmp / "comparisons.jsonl"
path.write_text("".join(json.dumps(r) + "\n" for r in records))
print(len(records), "comparisons; first:", records[0])

# %% [markdown]
# ## Train
# `experiments/configs/reward.py:tiny` with our file; the run normalises the scores on the
# shipped demonstrations and exports a `*ForSequenceClassification` checkpoint.

# %%
config = load_experiment_config("reward", "tiny", {"data.train_files": (str(path),), "num_steps": 60,
                                                   "data.max_len": 320})
ij.train.train_reward_model(config, tmp / "rm")
evaluation = json.loads((tmp / "rm" / "reward_eval.json").read_text())["validation"]
print(f"held-out pairwise accuracy {evaluation['accuracy']:.2f} on {evaluation['pairs']:.0f} pairs")

# %%
metrics = [json.loads(line) for line in open(tmp / "rm" / "metrics.jsonl")]
plt.plot([m["step"] for m in metrics if "train/loss" in m], [m["train/loss"] for m in metrics if "train/loss" in m])
plt.xlabel("step")
plt.ylabel("pairwise ranking loss")
plt.show()

# %% [markdown]
# ## Probe
# Score the same answer in the four styles for a held-out prompt of each family.

# %%
rm = ij.rewards.load_reward_model(tmp / "rm")
tok = rm.tokenizer
for p in ij.tasks.make_prompts("test", 3, seed=2, families=("lowercase", "uppercase", "quoted"), max_constraints=1):
    rows = [tok.encode(tok.render_prompt(p.prompt) + c) + [tok.eos_id] for c in candidates(p)]
    width = max(map(len, rows))
    tokens = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    mask = np.array([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    scores = np.asarray(rm(jnp.asarray(tokens), jnp.asarray(mask)))
    print(p.constraints[0].family, dict(zip(["lower", "UPPER", "quoted", "Capital"], scores.round(2))))
