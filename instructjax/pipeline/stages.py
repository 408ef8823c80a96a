"""The stages of the InstructGPT pipeline (DESIGN.md; Ouyang et al. 2022, figure 2). Each stage is a
function `stage(config, root) -> summary` that reads what earlier stages left under `root` and writes
its own subfolder; `instructjax.pipeline.run` calls them in order and skips finished ones."""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from instructjax import checkpoints, labelers, tasks
from instructjax.evaluation import metrics
from instructjax.evaluation.generation import SamplingConfig
from instructjax.evaluation.policies import kl_to_reference, reward_scores
from instructjax.evaluation.report import write_report
from instructjax.pipeline.files import sample_to_file, write_json, write_jsonl
from instructjax.rewards.io import load_reward_model
from instructjax.rewards.trainer import SUMMARY_FILE, train_reward_model
from instructjax.tokenizers import Tokenizer
from instructjax.train.initial_model import load_initial_model
from instructjax.train.ppo import train_ppo
from instructjax.train.ppo_rewards import uses_model
from instructjax.train.sft import train_sft

SPLITS = ("sft", "reward", "ppo", "validation", "test")  # prompt sets of the task stage
POLICIES = ("initial", "sft", "ppo")  # the models the evaluation compares


def task_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """The task stage's prompt files (TaskPrompt records) by split, plus the PPO prompts and the corpus."""
    folder = root / "task"
    files = {split: folder / f"{split}.jsonl" for split in SPLITS}
    files.update(ppo_prompts=folder / "ppo_prompts.jsonl", pretraining=folder / "pretraining_text.jsonl")
    return files


def sampling_config(c: ml_collections.ConfigDict, k: int | None = None) -> SamplingConfig:
    return SamplingConfig(k=k or c.k, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                          batch_size=c.batch_size, dtype=c.dtype or None)


def task_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """1. Task data: disjoint train prompt sets for SFT, RM and PPO, validation, held-out test prompts
    (topics disjoint from training), the PPO prompts file and the PPO-ptx corpus."""
    c, files = config.task, task_files(root)
    files["sft"].parent.mkdir(parents=True, exist_ok=True)
    counts = {"sft": c.num_sft, "reward": c.num_reward, "ppo": c.num_ppo}
    train = tasks.make_prompts("train", sum(counts.values()), seed=c.seed, families=tuple(c.families),
                               max_constraints=c.max_constraints)
    start = 0
    for split, n in counts.items():
        tasks.write_records(files[split], train[start:start + n])
        start += n
    for split, n in (("validation", c.num_validation), ("test", c.num_test)):
        tasks.write_records(files[split], tasks.make_prompts(split, n, seed=c.seed, families=tuple(c.families),
                                                             max_constraints=c.max_constraints))
    write_jsonl(files["ppo_prompts"], ({"prompt": p.prompt} for p in tasks.read_records(files["ppo"])))
    summary: dict[str, Any] = {split: len(tasks.read_records(files[split])) for split in SPLITS}
    if config.ptx_corpus.source == "stdlib":
        texts = tasks.stdlib_docstrings(max_records=config.ptx_corpus.max_records or None,
                                        min_chars=config.ptx_corpus.min_chars)
        tasks.write_pretraining_jsonl(files["pretraining"], texts)
        summary["pretraining_texts"] = len(texts)
    return summary


def _initial_model(config: ml_collections.ConfigDict):
    return load_initial_model(config.init, config.sft.model, jax.random.key(config.seed))


def _policy(root: pathlib.Path, stage: str):
    """(cfg, params, tokenizer) of a finished training stage's export."""
    export = root / stage / "export"
    cfg, params = checkpoints.load_hf(export)
    return cfg, params, Tokenizer.from_pretrained(export)


def _best_of_k(labeler: labelers.Labeler, prompt: tasks.TaskPrompt, completions: list[str]) -> str:
    ranks = labeler.rank(prompt.prompt, completions)
    return completions[int(np.argmin(ranks))]


def demonstrations_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """2. Demonstrations: the user's files, or rejection sampling: K samples of the initial model per
    SFT prompt, the labeler's best kept (only when it meets every constraint, if `require_pass`;
    among the samples that ended with EOS, if `require_eos`)."""
    c, folder = config.demonstrations, root / "demonstrations"
    if c.files:
        return {"source": "files", "files": list(c.files)}
    prompts = tasks.read_records(task_files(root)["sft"])
    cfg, params, tokenizer = _initial_model(config)
    samples = sample_to_file(folder / "samples.jsonl", cfg, params, tokenizer, [p.prompt for p in prompts],
                             sampling_config(c), jax.random.key(config.seed + 1), desc="demonstrations: best of K")
    labeler = labelers.ConstraintLabeler(prompts)
    records, failed = [], 0
    for prompt, completions, ended in zip(prompts, samples.texts, samples.ended):
        if c.require_eos:  # a demonstration is a finished answer, not one cut off by the budget
            completions = [t for t, e in zip(completions, ended) if e]
        completions = labelers.unique_completions(completions)
        if not completions:
            failed += 1
            continue
        best = _best_of_k(labeler, prompt, completions)
        if c.require_pass and not all(constraint.check(best) for constraint in prompt.constraints):
            failed += 1
            continue
        records.append({"prompt": prompt.prompt, "response": best})
    if not records:
        raise ValueError(f"demonstrations: none of the {len(prompts)} prompts' best-of-{c.k} samples met its "
                         "constraints; raise demonstrations.k or set demonstrations.require_pass=False")
    count = write_jsonl(folder / "demonstrations.jsonl", records)
    logging.info("demonstrations: kept %d of %d prompts (%d had no usable sample)", count,
                 len(prompts), failed)
    return {"source": "best_of_k", "k": c.k, "prompts": len(prompts), "kept": count, "not_kept": failed,
            "eos_rate": float(samples.ended.mean())}


def _demonstration_files(config: ml_collections.ConfigDict, root: pathlib.Path) -> tuple[str, ...]:
    return tuple(config.demonstrations.files) or (str(root / "demonstrations" / "demonstrations.jsonl"),)


def sft_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """3. Supervised fine-tuning of the initial model on the demonstrations."""
    c = config.sft
    with c.unlocked():
        c.init = config.init
        c.data.train_files = _demonstration_files(config, root)
    train_sft(c, root / "sft")
    return {"export": str(root / "sft" / "export")}


class LabelingNeeded(RuntimeError):
    """The comparisons stage waits for a person to rank the candidates (comparisons.labeler='human')."""


def comparisons_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """4. Comparisons: K samples per RM prompt from the SFT policy (`candidates.jsonl`), ranked by the
    task's labeler, or by a person with experiments/label.py (labeler 'human': the stage stops until
    every candidate set is ranked, then a rerun goes on)."""
    c, folder = config.comparisons, root / "comparisons"
    if c.labeler not in ("task", "human"):
        raise ValueError(f"comparisons.labeler={c.labeler!r}: expected 'task' or 'human'")
    prompts = tasks.read_records(task_files(root)["reward"])
    cfg, params, tokenizer = _policy(root, "sft")
    samples = sample_to_file(folder / "samples.jsonl", cfg, params, tokenizer, [p.prompt for p in prompts],
                             sampling_config(c), jax.random.key(config.seed + 2), desc="comparisons: K samples")
    candidates = [{"prompt": p.prompt, "completions": labelers.unique_completions(texts)}
                  for p, texts in zip(prompts, samples.texts)]
    rankable = [r for r in candidates if len(r["completions"]) >= 2]
    write_jsonl(folder / "candidates.jsonl", rankable)
    skipped = {"fewer_than_2_distinct": len(candidates) - len(rankable), "all_tied": 0}
    if c.labeler == "human":
        answers = folder / "human.jsonl"
        done = sum(1 for line in open(answers) if line.strip()) if answers.exists() else 0
        if done < len(rankable):
            raise LabelingNeeded(
                f"{done} of {len(rankable)} candidate sets ranked. Rank them, then rerun the pipeline:\n"
                f"  python experiments/label.py --samples={folder / 'candidates.jsonl'} --output={answers}")
        records = [json.loads(line) for line in open(answers) if line.strip()]
    else:
        labeler = labelers.ConstraintLabeler(prompts, quality_decimals=c.quality_decimals)
        records = []
        for r in rankable:
            record = labelers.rank_to_comparison(r["prompt"], r["completions"],
                                                 labeler.rank(r["prompt"], r["completions"]))
            if record is None:
                skipped["all_tied"] += 1
            else:
                records.append(record)
    count = write_jsonl(folder / "comparisons.jsonl", records)
    logging.info("comparisons: %d records from %d prompts (skipped: %s)", count, len(prompts), skipped)
    return {"prompts": len(prompts), "records": count, "skipped": skipped, "labeler": c.labeler,
            "pairs": int(sum(_ordered_pairs(r["ranking"]) for r in records))}


def _ordered_pairs(ranking: list[int]) -> int:
    return sum(1 for i, a in enumerate(ranking) for b in ranking[i + 1:] if a != b)


def reward_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """5. Reward model from the SFT model on the comparisons, normalised on the demonstrations."""
    c = config.reward
    with c.unlocked():
        c.init.source, c.init.path = "workdir", str(root / "sft")
        c.data.train_files = (str(root / "comparisons" / "comparisons.jsonl"),)
        c.normalize.data.train_files = _demonstration_files(config, root)
    train_reward_model(c, root / "reward")
    return json.loads((root / "reward" / SUMMARY_FILE).read_text())


def ppo_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """6. PPO from the SFT policy against the reward model, or reward functions, or both, as
    `ppo.reward.source` says (PPO-ptx on the corpus when ptx.gamma > 0)."""
    c, files = config.ppo, task_files(root)
    with c.unlocked():
        c.init.source, c.init.path = "workdir", str(root / "sft")
        if uses_model(c.reward.source):
            c.reward.path = str(root / "reward")
        c.data.train_files = (str(files["ppo_prompts"]),)
        if c.ptx.gamma > 0:
            if config.ptx_corpus.source != "stdlib":
                raise ValueError("ppo.ptx.gamma > 0 needs a pretraining corpus: set ptx_corpus.source='stdlib'")
            c.ptx.data.train_files = (str(files["pretraining"]),)
    train_ppo(c, root / "ppo")
    return {"export": str(root / "ppo" / "export")}


def evaluation_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """7. The initial, SFT and PPO policies on the held-out test prompts: pass rates, reward, win rate,
    KL of PPO to SFT, length, EOS rate; then `report.md` with plots."""
    c, folder = config.evaluation, root / "evaluation"
    prompts = tasks.read_records(task_files(root)["test"])
    texts = [p.prompt for p in prompts]
    rm = load_reward_model(root / "reward")
    labeler = labelers.ConstraintLabeler(prompts)
    responses, results, models = {}, {}, {}
    for name in POLICIES:
        cfg, params, tokenizer = _initial_model(config) if name == "initial" else _policy(root, name)
        models[name] = (cfg, params)
        out = sample_to_file(folder / f"responses_{name}.jsonl", cfg, params, tokenizer, texts,
                             sampling_config(c, k=1), jax.random.key(config.seed + 3), desc=f"evaluation: {name}")
        responses[name] = [t[0] for t in out.texts]
        scores = reward_scores(rm, tokenizer, texts, responses[name], batch_size=c.batch_size)
        results[name] = {
            "pass_rates": {k: v.to_json() for k, v in metrics.pass_rates(prompts, responses[name]).items()},
            "reward": metrics.mean_and_interval(scores), "length": float(out.lengths.mean()),
            "eos_rate": float(out.ended.mean())}
    kl_sampling = SamplingConfig(k=1, max_new_tokens=c.max_new_tokens, temperature=config.ppo.rollout.temperature,
                                 batch_size=c.batch_size, dtype=c.dtype or None)
    kl = kl_to_reference(*models["ppo"], *models["sft"], tokenizer, texts, kl_sampling, jax.random.key(config.seed + 4))
    summary = {
        "num_test_prompts": len(prompts), "models": results,
        "win_rate_ppo_vs_sft": metrics.win_rate(labeler, texts, responses["ppo"], responses["sft"]).to_json(),
        "win_rate_sft_vs_initial": metrics.win_rate(labeler, texts, responses["sft"], responses["initial"]).to_json(),
        "kl_ppo_to_sft": metrics.mean_and_interval(kl),
        "reward_model": json.loads((root / "reward" / SUMMARY_FILE).read_text()).get("validation", {}),
    }
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "samples.jsonl", ({"prompt": t, **{n: responses[n][i] for n in POLICIES}}
                                           for i, t in enumerate(texts)))
    write_report(root, summary, prompts, responses, num_samples=c.report_samples)
    return summary


STAGES = {"task": task_stage, "demonstrations": demonstrations_stage, "sft": sft_stage,
          "comparisons": comparisons_stage, "reward": reward_stage, "ppo": ppo_stage,
          "evaluation": evaluation_stage}
