"""The stages of the InstructGPT pipeline (docs/pipeline.md; Ouyang et al. 2022, figure 2). Each stage is a
function `stage(config, root) -> summary` that reads what earlier stages left under `root` and writes
its own subfolder; `instructjax.pipeline.run` calls them in order and skips finished ones. The
training stages' configs are built by `sft_config`, `reward_config`, `ppo_config` and `dpo_config`
(`stage_configs`: all of them), which fill in the fields the pipeline owns and refuse a user's value for
one. `pipeline_stages(config)` lists the stages of a config: the policy step is `config.algorithm`, and
`config.rounds` repeats comparisons, reward model and policy step, each round's in its own folder
(`round_name`)."""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import pathlib
import random
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from instructjax import checkpoints, labelers, tasks
from instructjax.datasets.jsonl import read_jsonl
from instructjax.evaluation import elo, metrics
from instructjax.evaluation.generation import SamplingConfig, iter_completions
from instructjax.evaluation.policies import kl_to_reference, perplexity, reward_scores
from instructjax.evaluation.report import write_report
from instructjax.losses import ordered_pair_mask
from instructjax.parallel import first_process_flag, host_values, sync_processes
from instructjax.pipeline.files import sample_to_file, write_json, write_jsonl, writes_files
from instructjax.rewards.io import RewardModel, load_reward_model
from instructjax.rl.frozen import frozen_model
from instructjax.train.reward import SUMMARY_FILE, train_reward_model
from instructjax.tokenizers import Tokenizer
from instructjax.train.config import COMPUTE_DTYPES, INIT_SOURCES, check_values
from instructjax.train.initial_model import load_initial_model
from instructjax.train.metrics import data_tally
from instructjax.train.dpo import train_dpo
from instructjax.train.ppo import check_config as check_ppo_config, train_ppo
from instructjax.train.ppo_rewards import uses_model
from instructjax.train.sft import train_sft
from instructjax.tasks.corpus import stdlib_docstrings, write_pretraining_jsonl
from instructjax.tasks.instructions import TaskPrompt, read_records, write_records

SPLITS = ("sft", "reward", "ppo", "validation", "test", "heldout")  # prompt sets of the task stage
ALGORITHMS = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo", "dpo": None}  # policy steps: PPO trainer's `advantage`
HELDOUT_SEED_OFFSET = 1_000_003  # held-out-family prompts: a draw independent of the test prompts' (same topics)
VALIDATION_START_FILE = "validation_start.json"  # an RL stage's validation metrics of its starting (SFT) policy
DEMONSTRATION_SOURCES = ("edit", "best_of_k")  # how the demonstrations stage makes a demonstration
LABELERS = ("task", "human")  # who ranks the comparisons
PTX_CORPORA = ("stdlib", "none")  # the PPO-ptx corpus
# The pipeline's own keys with a fixed set of values (each stage section is checked by `_filled`).
PIPELINE_CHOICES = {"init.source": INIT_SOURCES, "demonstrations.source": DEMONSTRATION_SOURCES,
                    "comparisons.labeler": LABELERS, "ptx_corpus.source": PTX_CORPORA,
                    **{f"{name}.dtype": ("",) + COMPUTE_DTYPES
                       for name in ("demonstrations", "comparisons", "evaluation")}}
# The smallest value of each count in `evaluation` (0 where the field documents 0 as "all" or "none").
EVALUATION_MINIMUMS = {"batch_size": 1, "max_new_tokens": 1, "report_samples": 0, "perplexity_max_len": 2,
                       "kl_prompts": 0, "elo_bootstrap": 1}


def task_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """The task stage's prompt files (TaskPrompt records) by split, the PPO prompts, the PPO-ptx corpus
    and the held-out docstrings (perplexity)."""
    folder = root / "task"
    files = {split: folder / f"{split}.jsonl" for split in SPLITS}
    files.update(ppo_prompts=folder / "ppo_prompts.jsonl", pretraining=folder / "pretraining_text.jsonl",
                 pretraining_heldout=folder / "pretraining_heldout.jsonl")
    return files


def sampling_config(c: ml_collections.ConfigDict, k: int | None = None) -> SamplingConfig:
    return SamplingConfig(k=k or c.k, max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                          batch_size=c.batch_size, dtype=c.dtype or None)


def task_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """1. Task data: disjoint train prompt sets for SFT, RM and PPO, validation, held-out test prompts
    (topics disjoint from training), test prompts of the held-out families (no training stage sees
    those families), the PPO prompts file, the PPO-ptx corpus and held-out docstrings."""
    c, files = config.task, task_files(root)
    heldout_families = tuple(c.heldout_families)
    if shared := sorted(set(heldout_families) & set(c.families)):
        raise ValueError(f"task.heldout_families {shared} are also in task.families: a held-out family must be "
                         "kept out of every training prompt set")
    if c.num_heldout and not heldout_families:
        raise ValueError(f"task.num_heldout={c.num_heldout} needs task.heldout_families")
    files["sft"].parent.mkdir(parents=True, exist_ok=True)
    counts = {"sft": c.num_sft, "reward": c.num_reward, "ppo": c.num_ppo}
    train = tasks.make_prompts("train", sum(counts.values()), seed=c.seed, families=tuple(c.families),
                               max_constraints=c.max_constraints)
    start = 0
    for split, n in counts.items():
        write_records(files[split], train[start:start + n])
        start += n
    for split, n in (("validation", c.num_validation), ("test", c.num_test)):
        write_records(files[split], tasks.make_prompts(split, n, seed=c.seed, families=tuple(c.families),
                                                       max_constraints=c.max_constraints))
    heldout = tasks.make_prompts("test", c.num_heldout, seed=c.seed + HELDOUT_SEED_OFFSET, families=heldout_families,
                                 max_constraints=c.max_constraints) if c.num_heldout else []
    write_records(files["heldout"], heldout)
    write_jsonl(files["ppo_prompts"], ({"prompt": p.prompt} for p in read_records(files["ppo"])))
    summary: dict[str, Any] = {split: len(read_records(files[split])) for split in SPLITS}
    if config.ptx_corpus.source == "stdlib":
        texts = stdlib_docstrings(max_records=config.ptx_corpus.max_records or None,
                                  min_chars=config.ptx_corpus.min_chars)
        train_texts, heldout_texts = _split_corpus(texts, config.ptx_corpus.num_heldout, config.seed)
        write_pretraining_jsonl(files["pretraining"], train_texts)
        write_pretraining_jsonl(files["pretraining_heldout"], heldout_texts)
        summary["pretraining_texts"], summary["pretraining_heldout_texts"] = len(train_texts), len(heldout_texts)
    return summary


def _split_corpus(texts: list[str], num_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training texts, `num_heldout` held-out texts) by a seeded draw, each keeping the corpus order."""
    if not 0 <= num_heldout < len(texts):
        raise ValueError(f"ptx_corpus.num_heldout={num_heldout} must leave training texts out of {len(texts)}")
    heldout = set(random.Random(seed).sample(range(len(texts)), num_heldout))
    return ([t for i, t in enumerate(texts) if i not in heldout], [t for i, t in enumerate(texts) if i in heldout])


def _initial_model(config: ml_collections.ConfigDict):
    return load_initial_model(config.init, config.sft.model, jax.random.key(config.seed))


def _policy(root: pathlib.Path, stage: str):
    """(cfg, params, tokenizer) of a finished training stage's export."""
    return _load_export(root / stage / "export")


def _load_export(export: pathlib.Path):
    cfg, params = checkpoints.load_hf(export)
    return cfg, params, Tokenizer.from_pretrained(export)


def _in_evaluation_dtype(config: ml_collections.ConfigDict, cfg, params):
    """(cfg, params) computing in `evaluation.dtype` ("": the model's), params cast once: every policy and
    reward model the evaluation compares runs its forwards in the same dtype, whatever dtype it was
    trained or exported in."""
    return frozen_model(cfg, params, config.evaluation.dtype)


def _evaluation_reward_model(config: ml_collections.ConfigDict, folder: pathlib.Path) -> RewardModel:
    """The reward stage's model in `folder`, computing in `evaluation.dtype` (its scalar head in float32)."""
    rm = load_reward_model(folder)
    cfg, params = _in_evaluation_dtype(config, rm.cfg, rm.params)
    return dataclasses.replace(rm, cfg=cfg, params=params)


def compared_policies(config: ml_collections.ConfigDict) -> dict[str, pathlib.Path]:
    """`evaluation.compare`: other runs' policies by name, each an export folder (a stage folder's `export`)."""
    compared = {}
    for entry in config.evaluation.compare:
        name, sep, path = entry.partition("=")
        folder = pathlib.Path(path)
        export = folder / "export" if (folder / "export" / "config.json").is_file() else folder
        if not sep or not name or name in compared or name in policy_names(config):
            raise ValueError(f"--config.evaluation.compare: {entry!r} must be 'NAME=DIR' with a NAME of its own "
                             f"(the run's policies: {policy_names(config)})")
        if not (export / "config.json").is_file():
            raise ValueError(f"--config.evaluation.compare: {entry!r}: no exported model in {folder} or {folder}/export")
        compared[name] = export
    return compared


def _best_of_k(labeler: labelers.Labeler, prompt: TaskPrompt, completions: list[str]) -> str:
    ranks = labeler.rank(prompt.prompt, completions)
    return completions[int(np.argmin(ranks))]


def demonstrations_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """2. Demonstrations: the user's files, or K samples of the initial model per SFT prompt made into
    one demonstration by the labeler: "edit" (the demonstrator edits the labeler's best sample, a
    finished one if there is one, until it meets every constraint) or "best_of_k" (rejection sampling:
    the best sample kept, only when it meets every constraint if `require_pass`; among the samples that
    ended with EOS if `require_eos`). Prompts without a demonstration are counted in the summary."""
    c, folder = config.demonstrations, root / "demonstrations"
    if c.files:
        return {"source": "files", "files": list(c.files)}
    prompts = read_records(task_files(root)["sft"])
    cfg, params, tokenizer = _initial_model(config)
    samples = sample_to_file(folder / "samples.jsonl", cfg, params, tokenizer, [p.prompt for p in prompts],
                             sampling_config(c), jax.random.key(config.seed + 1), desc="demonstrations: K samples")
    labeler = labelers.ConstraintLabeler(prompts)
    make = (functools.partial(_edited, labelers.ConstraintDemonstrator(), labeler) if c.source == "edit"
            else functools.partial(_best_passing, c, labeler))
    made = [make(prompt, texts, [bool(e) for e in ended])
            for prompt, texts, ended in zip(prompts, samples.texts, samples.ended)]
    outcomes = dict(collections.Counter(d.outcome for d in made))
    records = [{"prompt": p.prompt, "response": d.response} for p, d in zip(prompts, made) if d.response is not None]
    if not records:
        hint = "set demonstrations.source='edit' or require_pass=False" if c.source == "best_of_k" else "raise k"
        raise ValueError(f"demonstrations: none of the {len(prompts)} prompts got a demonstration ({outcomes}); "
                         f"{hint}")
    count = write_jsonl(folder / "demonstrations.jsonl", records)
    logging.info("demonstrations (%s): %d of %d prompts have one; outcomes: %s", c.source, count, len(prompts),
                 outcomes)
    summary = {"source": c.source, "k": c.k, "prompts": len(prompts), "kept": count, "not_kept": len(prompts) - count,
               "outcomes": outcomes, "eos_rate": float(samples.ended.mean())}
    if c.source == "edit":
        closeness = [d.closeness for d in made if d.response is not None]
        summary["closeness"] = {"mean": float(np.mean(closeness)), "min": float(np.min(closeness))}
    return summary


@dataclasses.dataclass(frozen=True)
class _Demonstration:
    """What the stage made of one prompt's samples."""

    response: str | None  # None: the prompt has no demonstration
    outcome: str  # what happened, counted in the stage summary
    closeness: float = 1.0  # of the response to the sample it was made from (labelers.closeness)


def _best_passing(c: ml_collections.ConfigDict, labeler: labelers.ConstraintLabeler, prompt: TaskPrompt,
                  texts: list[str], ended: list[bool]) -> _Demonstration:
    """best_of_k: the labeler's best sample as it is."""
    if c.require_eos:  # a demonstration is a finished answer, not one cut off by the budget
        texts = [t for t, e in zip(texts, ended) if e]
    completions = labelers.unique_completions(texts)
    if not completions:
        return _Demonstration(None, "no_finished_sample" if c.require_eos else "no_sample")
    best = _best_of_k(labeler, prompt, completions)
    if c.require_pass and not all(constraint.check(best) for constraint in prompt.constraints):
        return _Demonstration(None, "best_misses_a_constraint")
    return _Demonstration(best, "kept")


def _edited(demonstrator: labelers.ConstraintDemonstrator, labeler: labelers.ConstraintLabeler,
            prompt: TaskPrompt, texts: list[str], ended: list[bool]) -> _Demonstration:
    """edit: the labeler's best sample (among the finished ones, if any) edited by the demonstrator."""
    finished: dict[str, bool] = {}
    for text, e in zip(texts, ended):
        finished[text] = finished.get(text, False) or e
    completions = labelers.unique_completions(texts)
    if not completions:
        return _Demonstration(None, "no_sample")
    best = _best_of_k(labeler, prompt, [t for t in completions if finished[t]] or completions)
    response = demonstrator.edit(prompt, best, finished=finished[best])
    if response is None:
        return _Demonstration(None, "edit_failed")
    return _Demonstration(response, "unchanged" if response == best.strip() else "edited",
                          labelers.closeness(best, response))


def _demonstration_files(config: ml_collections.ConfigDict, root: pathlib.Path) -> tuple[str, ...]:
    return tuple(config.demonstrations.files) or (str(root / "demonstrations" / "demonstrations.jsonl"),)


def _filled(config: ml_collections.ConfigDict, section: str,
            values: dict[str, tuple[Any, str]]) -> ml_collections.ConfigDict:
    """A copy of the stage section `config.<section>` with the fields the pipeline owns filled in:
    `values` maps a dotted field to (value, where the value comes from), and every stage gets `seed`
    and `export`. The presets leave these fields unset (None: experiments/configs/pipeline.py); a
    value set on the command line is refused, naming the key, unless it is the pipeline's own."""
    values = {"seed": (config.seed, "--config.seed, which seeds every stage"),
              "export": (True, "later stages read each stage's export"),
              **{f"parallel.{k}": (v, f"--config.parallel.{k}: every stage runs in the pipeline's processes")
                 for k, v in config.parallel.items()}, **values}
    c = config[section].copy_and_resolve_references()
    for key, (value, origin) in values.items():
        if c[key] is not None and c[key] != value:
            raise ValueError(f"--config.{section}.{key}={c[key]!r} is set by the pipeline ({origin}); remove it")
        parent, _, name = key.rpartition(".")
        (c[parent] if parent else c)[name] = value
    check_values(c, prefix=f"--config.{section}.")
    return c


def _init(config: ml_collections.ConfigDict, source: str, path: str, origin: str) -> dict[str, tuple[Any, str]]:
    """A training stage's `init` fields for `_filled`: the initial model's (`config.init`) but `source`, `path`."""
    fields = {**config.init, "source": source, "path": path}
    return {f"init.{k}": (v, origin.format(key=k)) for k, v in fields.items()}


def sft_config(config: ml_collections.ConfigDict, root: pathlib.Path) -> ml_collections.ConfigDict:
    """`config.sft` from the initial model (`config.init`) on the demonstrations."""
    return _filled(config, "sft", {
        **_init(config, config.init.source, config.init.path,
                "the initial model, which the demonstrations and the evaluation use too: set --config.init.{key}"),
        "data.train_files": (_demonstration_files(config, root),
                             "the demonstrations stage's output; your own files: --config.demonstrations.files"),
    })


def round_name(stage: str, round_: int) -> str:
    """The folder of a round's stage: `stage` in round 1, `stage_r<round>` in later rounds."""
    return stage if round_ == 1 else f"{stage}_r{round_}"


def trains_reward_model(config: ml_collections.ConfigDict, round_: int) -> bool:
    """Whether round `round_` trains a reward model: round 1 always (the evaluation scores every policy
    with it), later rounds when the policy step reads one."""
    return round_ == 1 or (config.algorithm != "dpo" and uses_model(config.ppo.reward.source))


def started_from(config: ml_collections.ConfigDict, name: str) -> str:
    """The policy that policy `name` was trained from (its KL reference): the initial model for SFT, the last
    round's policy for a later round's, SFT for the rest (round 1's policy, PPO-ptx, a compared policy)."""
    if name == "sft":
        return "initial"
    base, _, round_ = name.rpartition("_r")
    later_round = base == config.algorithm and round_.isdigit() and int(round_) > 1
    return round_name(config.algorithm, int(round_) - 1) if later_round else "sft"


def _comparison_files(root: pathlib.Path, round_: int) -> tuple[str, ...]:
    """The comparisons of rounds 1 to `round_`: a round adds its comparisons to all earlier ones."""
    return tuple(str(root / round_name("comparisons", r) / "comparisons.jsonl") for r in range(1, round_ + 1))


def reward_config(config: ml_collections.ConfigDict, root: pathlib.Path, round_: int = 1) -> ml_collections.ConfigDict:
    """`config.reward` from the SFT model on the comparisons of rounds 1 to `round_`, normalised on the
    demonstrations."""
    return _filled(config, "reward", {
        **_init(config, "workdir", str(root / "sft"), "the SFT stage's model"),
        "data.train_files": (_comparison_files(root, round_), "the comparisons stages' output"),
        "normalize.data.train_files": (_demonstration_files(config, root), "the demonstrations SFT trained on"),
    })


def _previous_policy(config: ml_collections.ConfigDict, root: pathlib.Path, name: str) -> dict[str, tuple[Any, str]]:
    start = started_from(config, name)
    return _init(config, "workdir", str(root / start), f"the {start} stage's model")


def ppo_config(config: ml_collections.ConfigDict, root: pathlib.Path, name: str = "ppo",
               round_: int = 1) -> ml_collections.ConfigDict:
    """`config.ppo` for the policy stage `name` of round `round_` (`config.algorithm` ppo, grpo or rloo:
    the trainer's `advantage`, with `group_size` responses per prompt for the group baselines) on the
    task's PPO prompts, from the policy it starts from (`started_from`), against the round's reward model
    when `ppo.reward.source` reads one; for `name` "ppo_ptx" with `ptx.gamma` = `ppo_ptx.gamma` on the
    task stage's docstring corpus (the policy step keeps `ppo.ptx.gamma`, 0 unless the user sets it). A
    setting PPO would not honour is refused here (`ij.train.ppo.check_config`)."""
    if config.ppo.ptx.gamma > 0 and config.ppo_ptx.gamma > 0:
        raise ValueError(f"ppo.ptx.gamma={config.ppo.ptx.gamma} would make the plain-PPO policy a PPO-ptx one; "
                         "the pipeline trains PPO-ptx beside it with ppo_ptx.gamma: leave ppo.ptx.gamma at 0")
    gamma = config.ppo_ptx.gamma if name == "ppo_ptx" else config.ppo.ptx.gamma
    if gamma > 0 and config.ptx_corpus.source != "stdlib":
        raise ValueError(f"{name}: ptx.gamma={gamma} needs a pretraining corpus: set ptx_corpus.source='stdlib'")
    files, advantage = task_files(root), ALGORITHMS[config.algorithm]
    c = _filled(config, "ppo", {
        **_previous_policy(config, root, name),
        "advantage": (advantage, f"--config.algorithm={config.algorithm}"),
        "rollout.group_size": (1 if advantage == "gae" else config.group_size,
                               "--config.group_size for algorithm grpo or rloo, else 1"),
        "reward.path": (str(root / round_name("reward", round_)) if uses_model(config.ppo.reward.source) else "",
                        "the round's reward stage when ppo.reward.source reads a reward model, else empty"),
        "data.train_files": ((str(files["ppo_prompts"]),), "the task stage's PPO prompts"),
        "ptx.data.train_files": ((str(files["pretraining"]),) if gamma > 0 else (),
                                 "the task stage's docstring corpus when ptx.gamma > 0, else empty"),
    })
    c.ptx.gamma = gamma
    check_ppo_config(c)
    return c


def dpo_config(config: ml_collections.ConfigDict, root: pathlib.Path, round_: int = 1) -> ml_collections.ConfigDict:
    """`config.dpo` for round `round_`'s policy step (algorithm dpo): from the policy it starts from (also
    its reference) on the comparisons of rounds 1 to `round_`."""
    return _filled(config, "dpo", {
        **_previous_policy(config, root, round_name("dpo", round_)),
        "data.train_files": (_comparison_files(root, round_), "the comparisons stages' output"),
    })


def _check_policy_steps(config: ml_collections.ConfigDict) -> None:
    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"--config.algorithm={config.algorithm!r}: expected one of {tuple(ALGORITHMS)}")
    if config.rounds < 1:
        raise ValueError(f"--config.rounds={config.rounds}: expected at least 1")
    if config.rounds > 1 and not (config.algorithm == "dpo" or uses_model(config.ppo.reward.source)):
        raise ValueError(f"--config.rounds={config.rounds}: later rounds collect comparisons for a reward model or "
                         f"DPO, and ppo.reward.source={config.ppo.reward.source!r} reads none")
    compared_policies(config)


def _check_evaluation(config: ml_collections.ConfigDict) -> None:
    for key, least in EVALUATION_MINIMUMS.items():
        if config.evaluation[key] < least:
            raise ValueError(f"--config.evaluation.{key}={config.evaluation[key]}: expected at least {least}")


def stage_configs(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
    """The config of every training stage `config` runs, by stage folder: what `run_pipeline` builds
    first, so that a config the stages would refuse is refused before anything is written."""
    check_values(config, choices=PIPELINE_CHOICES)
    _check_policy_steps(config)
    _check_evaluation(config)
    configs = {"sft": sft_config(config, root)}
    for round_ in range(1, config.rounds + 1):
        if trains_reward_model(config, round_):
            configs[round_name("reward", round_)] = reward_config(config, root, round_)
        name = round_name(config.algorithm, round_)
        configs[name] = (dpo_config(config, root, round_) if config.algorithm == "dpo"
                         else ppo_config(config, root, name, round_))
    if config.ppo_ptx.gamma > 0 and config.algorithm == "dpo":
        logging.warning("algorithm='dpo': no PPO-ptx policy is trained (DPO has no pretraining-loss term); "
                        "ppo_ptx.gamma=%s is not read", config.ppo_ptx.gamma)
    elif config.ppo_ptx.gamma > 0:
        configs["ppo_ptx"] = ppo_config(config, root, "ppo_ptx")
    _check_completions_fit(config, configs)
    return configs


def _check_completions_fit(config: ml_collections.ConfigDict, configs: dict[str, ml_collections.ConfigDict]) -> None:
    """A ValueError naming the keys when a trainer on the comparisons would drop records: the comparisons stage
    ranks up to `comparisons.k` completions a prompt, more than the trainer's `data.max_completions`."""
    for name, c in configs.items():
        section = name.split("_")[0]
        if section in ("reward", "dpo") and c.data.max_completions < config.comparisons.k:
            raise ValueError(f"--config.comparisons.k={config.comparisons.k} > --config.{section}.data.max_completions="
                             f"{c.data.max_completions}: comparisons records with more completions would be dropped; raise "
                             f"{section}.data.max_completions to at least {config.comparisons.k}")


def _train(trainer: Callable[..., Any], stage_config: ml_collections.ConfigDict, folder: pathlib.Path,
           **kwargs: Any) -> None:
    """`trainer(stage_config, folder, **kwargs)`, then (several processes) wait until process 0 has written
    the folder's summary, metrics and export, which the stage reads next."""
    trainer(stage_config, folder, **kwargs)
    sync_processes(f"trained {folder}")


def sft_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """3. Supervised fine-tuning of the initial model on the demonstrations."""
    _train(train_sft, sft_config(config, root), root / "sft")
    return {"export": str(root / "sft" / "export"), "data": data_tally(root / "sft" / "metrics.jsonl")}


class LabelingNeeded(RuntimeError):
    """The comparisons stage waits for a person to rank the candidates (comparisons.labeler='human')."""


def comparisons_stage(config: ml_collections.ConfigDict, root: pathlib.Path, round_: int = 1) -> dict[str, Any]:
    """4. Comparisons: K samples per RM prompt from the SFT policy (in a later round: the last round's
    policy; `candidates.jsonl`), ranked by the task's labeler, or by a person with experiments/label.py
    (labeler 'human': the stage stops until every candidate set is ranked, then a rerun goes on)."""
    c, folder = config.comparisons, root / round_name("comparisons", round_)
    prompts = read_records(task_files(root)["reward"])
    source = "sft" if round_ == 1 else round_name(config.algorithm, round_ - 1)
    cfg, params, tokenizer = _policy(root, source)
    key = jax.random.key(config.seed + 2)
    samples = sample_to_file(folder / "samples.jsonl", cfg, params, tokenizer, [p.prompt for p in prompts],
                             sampling_config(c), key if round_ == 1 else jax.random.fold_in(key, round_),
                             desc=f"{folder.name}: K samples of {source}")
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
        records = [r.record for r in read_jsonl("comparisons", answers)]
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
    return {"prompts": len(prompts), "records": count, "skipped": skipped, "labeler": c.labeler, "policy": source,
            "pairs": int(sum(ordered_pair_mask(np.asarray(r["ranking"])).sum() for r in records))}


def reward_stage(config: ml_collections.ConfigDict, root: pathlib.Path, round_: int = 1) -> dict[str, Any]:
    """5. Reward model from the SFT model on the comparisons (of every round so far), normalised on the
    demonstrations."""
    folder = root / round_name("reward", round_)
    _train(train_reward_model, reward_config(config, root, round_), folder)
    return {**json.loads((folder / SUMMARY_FILE).read_text()), "data": data_tally(folder / "metrics.jsonl")}


def _rl_stage(config: ml_collections.ConfigDict, root: pathlib.Path, name: str, round_: int = 1) -> dict[str, Any]:
    """The PPO trainer into ROOT/`name` (`ppo_config`: PPO, GRPO or RLOO, PPO-ptx for "ppo_ptx") from the
    policy it starts from, against the reward model, reward functions or both, as `ppo.reward.source`
    says; the validation pass rate (and RM score, when there is a reward model) logged along the run."""
    c = ppo_config(config, root, name, round_)
    evaluate = _validation_eval(config, root, root / round_name("reward", round_))
    start = root / name / VALIDATION_START_FILE
    if not first_process_flag(start.exists()):  # the curve's first point (KL 0): the policy it starts from
        cfg, params, _ = _policy(root, started_from(config, name))
        write_json(start, evaluate(cfg, params, 0))
    _train(train_ppo, c, root / name, evaluate=evaluate)
    return {"export": str(root / name / "export"), "algorithm": config.algorithm if name != "ppo_ptx" else "ppo",
            "advantage": c.advantage, "ptx_gamma": c.ptx.gamma, "started_from": started_from(config, name),
            "data": data_tally(root / name / "metrics.jsonl")}


def policy_stage(config: ml_collections.ConfigDict, root: pathlib.Path, round_: int = 1) -> dict[str, Any]:
    """6. The policy step of round `round_` (`config.algorithm`): PPO, GRPO or RLOO against the reward
    model (InstructGPT step 3), or DPO on the comparisons; from the SFT policy in round 1, from the last
    round's policy after."""
    name = round_name(config.algorithm, round_)
    if config.algorithm != "dpo":
        return _rl_stage(config, root, name, round_)
    _train(train_dpo, dpo_config(config, root, round_), root / name)
    return {"export": str(root / name / "export"), "algorithm": "dpo", "started_from": started_from(config, name),
            "data": data_tally(root / name / "metrics.jsonl")}


def _validation_eval(config: ml_collections.ConfigDict, root: pathlib.Path, reward_dir: pathlib.Path):
    """evaluate(cfg, params, iteration) -> greedy validation pass rate (the task's checker: the gold reward)
    and mean RM score (the proxy; only when the reward stage ran), so the report can plot both against KL
    (Gao et al. 2022)."""
    prompts = read_records(task_files(root)["validation"])
    texts = [p.prompt for p in prompts]
    tokenizer = Tokenizer.from_pretrained(root / "sft" / "export")
    rm = _evaluation_reward_model(config, reward_dir) if (reward_dir / SUMMARY_FILE).exists() else None
    c = config.evaluation

    def evaluate(cfg, params, step: int) -> dict[str, float]:
        params = jax.device_put(host_values(params), jax.local_devices()[0])  # the trainer's (global) arrays, here
        responses = [t[0] for batch in iter_completions(cfg, params, tokenizer, texts, sampling_config(c, k=1),
                                                        jax.random.key(config.seed + 5), desc=f"validation {step}")
                     for t in batch.texts]
        results = {"pass_rate": float(metrics.prompt_passes(prompts, responses).mean())}
        if rm is not None:
            scores = reward_scores(rm, tokenizer, texts, responses, batch_size=c.batch_size)
            results["reward_score"] = float(scores.mean())
        return results
    return evaluate


def ppo_ptx_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """7. PPO-ptx (InstructGPT eq. 2): round 1's policy step again with the pretraining loss, from the same
    SFT policy and reward model, for the alignment tax; skipped when ppo_ptx.gamma is 0 or the algorithm
    is DPO."""
    if config.ppo_ptx.gamma <= 0 or config.algorithm == "dpo":
        return {"skipped": "ppo_ptx.gamma is 0" if config.ppo_ptx.gamma <= 0 else "algorithm='dpo'"}
    return _rl_stage(config, root, "ppo_ptx")


def policy_names(config: ml_collections.ConfigDict) -> list[str]:
    """The run's own models: initial, SFT, each round's policy and PPO-ptx (when trained)."""
    rounds = [round_name(config.algorithm, r) for r in range(1, config.rounds + 1)]
    ptx = ["ppo_ptx"] if config.ppo_ptx.gamma > 0 and config.algorithm != "dpo" else []
    return ["initial", "sft", *rounds, *ptx]


def evaluation_stage(config: ml_collections.ConfigDict, root: pathlib.Path) -> dict[str, Any]:
    """8. Every policy on the test prompts (pass rates by family, RM score, length, EOS rate), on the
    held-out families' prompts and on held-out docstrings (the alignment tax); paired McNemar tests of
    the pass rates, win rates by the labeler, Elo ratings of every policy from the labeler's judgements of
    each pair, KL of the RL policies to SFT, and the reward stage's held-out pairwise accuracy (overall and
    per constraint family); then `report.md` with plots."""
    c, folder, files = config.evaluation, root / "evaluation", task_files(root)
    prompt_sets = {"test": read_records(files["test"]), "heldout": read_records(files["heldout"])}
    heldout_texts = _read_texts(files["pretraining_heldout"])
    rm = _evaluation_reward_model(config, root / "reward")
    compared = compared_policies(config)
    names = [*policy_names(config), *compared]  # the run's models, then other runs' (evaluation.compare)
    responses, passes, results, models, scores = {}, {}, {}, {}, {}
    for name in names:
        cfg, params, tokenizer = (_initial_model(config) if name == "initial" else
                                  _load_export(compared[name]) if name in compared else _policy(root, name))
        cfg, params = models[name] = _in_evaluation_dtype(config, cfg, params)
        results[name] = {}
        for split, prompts in prompt_sets.items():
            if not prompts:
                continue
            texts = [p.prompt for p in prompts]
            suffix = "" if split == "test" else f"_{split}"
            out = sample_to_file(folder / f"responses_{name}{suffix}.jsonl", cfg, params, tokenizer, texts,
                                 sampling_config(c, k=1), jax.random.key(config.seed + 3),
                                 desc=f"evaluation: {name} ({split})")
            answers = [t[0] for t in out.texts]
            responses[name, split], passes[name, split] = answers, metrics.prompt_passes(prompts, answers)
            result = {"pass_rates": {k: v.to_json() for k, v in metrics.pass_rates(prompts, answers).items()}}
            if split == "test":
                scores[name] = reward_scores(rm, tokenizer, texts, answers, batch_size=c.batch_size)
                result.update(reward=metrics.mean_and_interval(scores[name]),
                              length=float(out.lengths.mean()), eos_rate=float(out.ended.mean()))
            results[name][split] = result
        if heldout_texts:
            results[name]["perplexity"] = perplexity(cfg, params, tokenizer, heldout_texts,
                                                     max_len=c.perplexity_max_len, batch_size=c.batch_size)
    test_texts = [p.prompt for p in prompt_sets["test"]]
    labeler = labelers.ConstraintLabeler(prompt_sets["test"])
    rl_policies = names[2:]
    kl_sampling = SamplingConfig(k=1, max_new_tokens=c.max_new_tokens, temperature=config.ppo.rollout.temperature,
                                 batch_size=c.batch_size, dtype=c.dtype or None)
    kl_texts = test_texts[:c.kl_prompts] if c.kl_prompts else test_texts  # KL costs a sampling pass per policy
    each_step = [(n, started_from(config, n)) for n in names[1:]]  # each policy against the one it started from
    pairs = each_step + [(n, "initial") for n in rl_policies]
    outcomes = metrics.pairwise_outcomes(labeler, test_texts, [responses[n, "test"] for n in names])

    def agreement(*policies: str) -> dict[str, float]:
        """The reward model's agreement with the labeler on these policies' test responses."""
        index = [names.index(n) for n in policies]
        return metrics.reward_agreement(outcomes[:, index][:, :, index], np.stack([scores[n] for n in policies])
                                        ).to_json()

    summary = {
        "num_test_prompts": len(prompt_sets["test"]), "num_heldout_prompts": len(prompt_sets["heldout"]),
        "num_heldout_texts": len(heldout_texts), "models": results,
        "paired_tests": {split: {f"{a}_vs_{b}": metrics.mcnemar_exact(passes[a, split], passes[b, split])
                                 for a, b in pairs} for split in prompt_sets if prompt_sets[split]},
        "win_rates": {f"{a}_vs_{b}": metrics.win_rate(labeler, test_texts, responses[a, "test"],
                                                      responses[b, "test"]).to_json() for a, b in each_step},
        "kl_to_sft": {n: metrics.mean_and_interval(kl_to_reference(*models[n], *models["sft"], tokenizer, kl_texts,
                                                                   kl_sampling, jax.random.key(config.seed + 4)))
                      for n in rl_policies},
        "num_kl_prompts": len(kl_texts),
        "reward_model": _reward_validation(root / "reward"),
        "reward_agreement": {"all": agreement(*names), **{f"{a}_vs_{b}": agreement(a, b) for a, b in each_step}},
        "later_reward_models": {round_name("reward", r): _reward_validation(root / round_name("reward", r))
                                for r in range(2, config.rounds + 1) if trains_reward_model(config, r)},
        "elo": elo.elo_summary(outcomes, names, num_bootstrap=c.elo_bootstrap, seed=config.seed,
                               prior_ties=c.elo_prior_ties),
    }
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "samples.jsonl", ({"prompt": t, **{n: responses[n, "test"][i] for n in names}}
                                           for i, t in enumerate(test_texts)))
    if writes_files():
        write_report(root, summary, prompt_sets["test"], {n: responses[n, "test"] for n in names},
                     num_samples=c.report_samples)
    return summary


def _reward_validation(folder: pathlib.Path) -> dict[str, Any]:
    """A reward stage's held-out pairwise accuracy (overall and per family)."""
    return json.loads((folder / SUMMARY_FILE).read_text()).get("validation", {})


def _read_texts(path: pathlib.Path) -> list[str]:
    """The `text` fields of a pretraining JSONL file; [] when it does not exist (no corpus)."""
    return [r.record["text"] for r in read_jsonl("pretraining_text", path)] if path.exists() else []


def pipeline_stages(config: ml_collections.ConfigDict) -> dict[str, Callable[..., dict[str, Any]]]:
    """The stages `config` runs, in order, by folder: `stage(config, root) -> summary`."""
    stages = {"task": task_stage, "demonstrations": demonstrations_stage, "sft": sft_stage}
    for round_ in range(1, config.rounds + 1):
        stages[round_name("comparisons", round_)] = functools.partial(comparisons_stage, round_=round_)
        if trains_reward_model(config, round_):
            stages[round_name("reward", round_)] = functools.partial(reward_stage, round_=round_)
        stages[round_name(config.algorithm, round_)] = functools.partial(policy_stage, round_=round_)
        if round_ == 1:
            stages["ppo_ptx"] = ppo_ptx_stage
    stages["evaluation"] = evaluation_stage
    return stages
