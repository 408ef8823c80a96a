"""Config overrides of the pipeline either reach the stage they configure or fail loudly: a field the
pipeline fills in (seed, export, init, the earlier stages' files) is refused, naming the key, before
anything is written; every other stage field and every top-level field reaches its stage. No training:
the stage configs are built by `stages.sft_config` / `reward_config` / `ppo_config`."""

import os
import pathlib
import subprocess
import sys

import pytest

import instructjax as ij
from instructjax.pipeline import stages
from instructjax.train.reward import SUMMARY_FILE
from instructjax.testing.experiments import CONFIGS, config_leaf_paths, load_experiment_config
from instructjax.tasks.instructions import read_records

FUNCTION = "instructjax.tasks.rewards:constraint_fraction"
PRESETS = ("tiny", "quick", "full", "hf", "gold")


def _config(overrides=None, preset="tiny"):
    return load_experiment_config("pipeline", preset, overrides).copy_and_resolve_references()


@pytest.mark.parametrize("key, value", [
    ("sft.data.train_files", ("my_demos.jsonl",)),
    ("sft.init.path", "/models/hf_dir"),
    ("sft.init.source", "hf"),
    ("sft.seed", 3),  # it was a reference to `seed`: setting it changed every stage's seed
    ("reward.init.path", "runs/sft"),
    ("reward.data.train_files", ("comparisons.jsonl",)),
    ("reward.normalize.data.train_files", ()),
    ("ppo.init.source", "hf"),
    ("ppo.reward.path", "runs/rm"),
    ("ppo.data.train_files", ("prompts.jsonl",)),
    ("ppo.ptx.data.train_files", ("corpus.jsonl",)),
    ("ppo.export", False),
    ("ppo.advantage", "rloo"),  # --config.algorithm
    ("ppo.rollout.group_size", 8),  # --config.group_size
    ("dpo.init.path", "runs/sft"),
    ("dpo.data.train_files", ("comparisons.jsonl",)),
    ("ppo.parallel.multi_host", True),  # --config.parallel.*: every stage runs in the pipeline's processes
    ("sft.parallel.process_id", 1),
    ("dpo.parallel.coordinator_address", "127.0.0.1:1234"),
])
def test_a_pipeline_field_is_refused_before_anything_is_written(tmp_path, key, value):
    algorithm = "dpo" if key.startswith("dpo.") else "ppo"  # the section the policy step reads
    config = load_experiment_config("pipeline", "tiny", {key: value, "algorithm": algorithm})
    with pytest.raises(ValueError, match=rf"--config\.{key}=.* is set by the pipeline .*; remove it"):
        ij.pipeline.run_pipeline(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()



def test_the_pipeline_processes_reach_every_training_stage():
    placed = {"parallel.multi_host": True, "parallel.coordinator_address": "127.0.0.1:1234",
              "parallel.num_processes": 2, "parallel.process_id": 1}
    configs = stages.stage_configs(_config(placed), pathlib.Path("/nonexistent"))
    assert set(configs) == {"sft", "reward", "ppo", "ppo_ptx"}
    for c in configs.values():
        assert {key: c[key] for key in placed} == placed


@pytest.mark.parametrize("algorithm", ["ppo", "dpo"])
def test_more_completions_than_the_trainer_takes_are_refused_naming_the_keys(tmp_path, algorithm):
    section = "reward" if algorithm == "ppo" else "dpo"
    fits = {"reward.data.max_completions": 5} if section == "dpo" else {}  # DPO runs train a reward model too
    config = load_experiment_config("pipeline", "tiny", {"algorithm": algorithm, "comparisons.k": 5, **fits,
                                                         f"{section}.data.max_completions": 4})
    with pytest.raises(ValueError, match=rf"--config\.comparisons\.k=5 > --config\.{section}\.data\.max_completions=4"):
        ij.pipeline.run_pipeline(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert stages.stage_configs(_config({"algorithm": algorithm, "comparisons.k": 4}), tmp_path)  # K 4 fits


def test_the_quick_presets_score_no_padding_completions():
    config = _config(preset="quick")
    assert config.reward.data.max_completions == config.dpo.data.max_completions == config.comparisons.k


def test_the_command_line_refuses_a_pipeline_field(tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(CONFIGS.parents[1])}
    result = subprocess.run([sys.executable, str(CONFIGS.parent / "pipeline.py"),
                             f"--config={CONFIGS / 'pipeline.py'}:tiny", f"--workdir={workdir}",
                             "--config.sft.data.train_files=('my_demos.jsonl',)"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0
    assert ("--config.sft.data.train_files=('my_demos.jsonl',) is set by the pipeline (the demonstrations stage's "
            "output; your own files: --config.demonstrations.files); remove it") in result.stderr
    assert not workdir.exists()


def test_a_pipeline_field_set_to_the_pipelines_own_value_is_accepted(tmp_path):
    config = _config({"seed": 5, "sft.seed": 5, "reward.export": True,
                      "ppo.data.train_files": (str(tmp_path / "task" / "ppo_prompts.jsonl"),)})
    configs = stages.stage_configs(config, tmp_path)
    assert configs["sft"].seed == 5 and configs["reward"].export


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_leaves_the_pipeline_fields_to_the_pipeline(tmp_path, preset):
    config = _config(preset=preset)
    configs = stages.stage_configs(config, tmp_path)
    assert set(configs) == ({"sft", "reward", "ppo", "ppo_ptx"} if config.ppo_ptx.gamma > 0 else
                            {"sft", "reward", "ppo"})
    for name, c in configs.items():  # no field left unset
        assert [p for p in config_leaf_paths(c) if c[p] is None] == [], name
        assert c.seed == config.seed and c.export
    assert configs["sft"].init.to_dict() == config.init.to_dict()
    assert configs["sft"].data.train_files == (str(tmp_path / "demonstrations" / "demonstrations.jsonl"),)
    for name in ("reward", "ppo"):
        assert (configs[name].init.source, configs[name].init.path) == ("workdir", str(tmp_path / "sft"))
    assert configs["reward"].data.train_files == (str(tmp_path / "comparisons" / "comparisons.jsonl"),)
    assert configs["ppo"].data.train_files == (str(tmp_path / "task" / "ppo_prompts.jsonl"),)
    assert configs["ppo"].reward.path == ("" if preset == "gold" else str(tmp_path / "reward"))
    assert (configs["ppo"].ptx.gamma, configs["ppo"].ptx.data.train_files) == (0.0, ())
    if "ppo_ptx" in configs:
        assert configs["ppo_ptx"].ptx.gamma == config.ppo_ptx.gamma > 0
        assert configs["ppo_ptx"].ptx.data.train_files == (str(tmp_path / "task" / "pretraining_text.jsonl"),)


def test_overrides_reach_the_stage_configs(tmp_path):
    config = _config({"seed": 7, "init.source": "hf", "init.path": "/models/hf_dir",
                      "demonstrations.files": ("my_demos.jsonl",), "sft.optim.lr": 1e-4,
                      "sft.data.validation_files": ("my_validation.jsonl",), "reward.loss.margin": 0.5,
                      "reward.normalize.reference": "none", "ppo.kl.init_coef": 0.1,
                      "ppo.reward.source": "function", "ppo.reward.function": FUNCTION, "ppo.value.init": "policy"})
    configs = stages.stage_configs(config, tmp_path)
    assert {c.seed for c in configs.values()} == {7}
    assert (configs["sft"].init.source, configs["sft"].init.path) == ("hf", "/models/hf_dir")
    assert configs["sft"].optim.lr == 1e-4 and configs["sft"].data.validation_files == ("my_validation.jsonl",)
    assert configs["sft"].data.train_files == configs["reward"].normalize.data.train_files == ("my_demos.jsonl",)
    assert configs["reward"].loss.margin == 0.5 and configs["reward"].normalize.reference == "none"
    reward = configs["ppo"].reward
    assert (reward.source, reward.function, reward.path) == ("function", FUNCTION, "")
    assert configs["ppo"].kl.init_coef == configs["ppo_ptx"].kl.init_coef == 0.1
    assert configs["ppo"].optim.lr == load_experiment_config("pipeline", "tiny").ppo.optim.lr  # the rest as is


def test_ppo_ptx_gamma_is_plain_ppos_own_or_refused(tmp_path):
    config = _config({"ppo.ptx.gamma": 0.5, "ppo_ptx.gamma": 0.0})  # plain PPO with a pretraining loss: honoured
    ppo = stages.stage_configs(config, tmp_path)["ppo"]
    assert (ppo.ptx.gamma, ppo.ptx.data.train_files) == (0.5, (str(tmp_path / "task" / "pretraining_text.jsonl"),))
    with pytest.raises(ValueError, match="ptx_corpus.source='stdlib'"):
        stages.stage_configs(_config({"ppo.ptx.gamma": 0.5, "ppo_ptx.gamma": 0.0, "ptx_corpus.source": "none"}),
                             tmp_path)
    both = load_experiment_config("pipeline", "tiny", {"ppo.ptx.gamma": 0.5})  # and PPO-ptx beside it: refused
    with pytest.raises(ValueError, match="leave ppo.ptx.gamma at 0"):
        ij.pipeline.run_pipeline(both, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algorithm, rounds", [("ppo", 1), ("grpo", 2), ("dpo", 2)])
def test_the_stages_train_with_the_built_configs(tmp_path, monkeypatch, algorithm, rounds):
    config = _config({"seed": 3, "sft.optim.lr": 1e-4, "reward.loss.margin": 0.5, "ppo.kl.init_coef": 0.1,
                      "algorithm": algorithm, "rounds": rounds})
    trained = {}

    def train(c, workdir, **kwargs):
        trained[workdir.name] = c
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / SUMMARY_FILE).write_text("{}")

    for name in ("train_sft", "train_reward_model", "train_ppo", "train_dpo"):
        monkeypatch.setattr(stages, name, train)
    monkeypatch.setattr(stages, "_validation_eval", lambda config, root, reward_dir: lambda cfg, params, step: {})
    monkeypatch.setattr(stages, "_policy", lambda root, name: (None, None, None))
    untrained = ("task", "demonstrations", "evaluation") + tuple(stages.round_name("comparisons", r)
                                                                   for r in range(1, rounds + 1))
    for name, stage in stages.pipeline_stages(config).items():
        if name not in untrained:
            stage(config, tmp_path)
    built = stages.stage_configs(config, tmp_path)
    assert {name: c.to_dict() for name, c in trained.items()} == {name: c.to_dict() for name, c in built.items()}
    assert trained["sft"].optim.lr == 1e-4 and trained["reward"].loss.margin == 0.5
    assert {c.seed for c in trained.values()} == {3}
    comparisons = tuple(str(tmp_path / stages.round_name("comparisons", r) / "comparisons.jsonl")
                        for r in range(1, rounds + 1))
    last = stages.round_name(algorithm, rounds)
    assert trained[algorithm].init.path == str(tmp_path / "sft")
    assert trained[last].init.path == str(tmp_path / (stages.round_name(algorithm, rounds - 1) if rounds > 1 else "sft"))
    if algorithm == "dpo":  # no PPO-ptx, no later reward model: DPO learns from the comparisons themselves
        assert set(trained) == {"sft", "reward", *(stages.round_name("dpo", r) for r in range(1, rounds + 1))}
        assert trained[last].data.train_files == comparisons
        return
    assert trained[stages.round_name("reward", rounds)].data.train_files == comparisons  # every round's so far
    assert trained[last].reward.path == str(tmp_path / stages.round_name("reward", rounds))
    assert trained["ppo_ptx"].ptx.gamma == config.ppo_ptx.gamma and trained["ppo_ptx"].init.path == str(tmp_path / "sft")
    advantage, group_size = {"ppo": ("gae", 1), "grpo": ("grpo", config.group_size)}[algorithm]
    for name in (last, "ppo_ptx"):
        assert (trained[name].advantage, trained[name].rollout.group_size, trained[name].kl.init_coef) == (
            advantage, group_size, 0.1)


@pytest.mark.parametrize("overrides, message", [
    ({"algorithm": "a2c"}, r"--config.algorithm='a2c': expected one of \('ppo', 'grpo', 'rloo', 'dpo'\)"),
    ({"rounds": 0}, "--config.rounds=0: expected at least 1"),
    ({"rounds": 2, "ppo.reward.source": "function", "ppo.reward.function": FUNCTION, "ppo.value.init": "policy"},
     "--config.rounds=2: later rounds collect comparisons for a reward model or DPO"),
    ({"evaluation.compare": ("runs/grpo",)}, r"evaluation.compare: 'runs/grpo' must be 'NAME=DIR'"),
    ({"evaluation.compare": ("sft=runs/sft",)}, r"evaluation.compare: 'sft=runs/sft' must be 'NAME=DIR' with a NAME"),
    ({"evaluation.compare": ("grpo=/nowhere/grpo",)}, r"'grpo=/nowhere/grpo': no exported model in /nowhere/grpo"),
    ({"sft.model.dtype": "bfloat17"}, r"--config.sft.model.dtype='bfloat17': expected one of \('float32', 'bfloat16'"),
    ({"ppo.optim.schedule": "exp"}, r"--config.ppo.optim.schedule='exp': expected one of \('constant', 'linear'"),
    ({"ppo.kl.controller": "adaptiv"}, r"--config.ppo.kl.controller='adaptiv': expected one of \('fixed', 'adapt"),
    ({"comparisons.dtype": "fp8"}, r"--config.comparisons.dtype='fp8': expected one of \('', 'float32'"),
    ({"comparisons.labeler": "humans"}, r"--config.comparisons.labeler='humans': expected one of \('task', 'human'\)"),
    ({"demonstrations.source": "oracle"}, r"--config.demonstrations.source='oracle': expected one of \('edit', 'best_"),
    ({"evaluation.kl_prompts": -1}, r"--config.evaluation.kl_prompts=-1: expected at least 0"),
    ({"evaluation.report_samples": -3}, r"--config.evaluation.report_samples=-3: expected at least 0"),
    ({"evaluation.perplexity_max_len": 1}, r"--config.evaluation.perplexity_max_len=1: expected at least 2"),
    ({"evaluation.elo_bootstrap": 0}, r"--config.evaluation.elo_bootstrap=0: expected at least 1"),
    ({"evaluation.batch_size": 0}, r"--config.evaluation.batch_size=0: expected at least 1"),
])
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        ij.pipeline.run_pipeline(load_experiment_config("pipeline", "tiny", overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_task_overrides_reach_the_task_stage(tmp_path):
    families = ("lowercase", "no_commas")
    config = _config({"task.num_test": 5, "task.num_heldout": 3, "task.families": families,
                      "ptx_corpus.source": "none"})
    summary = stages.task_stage(config, tmp_path)
    assert (summary["test"], summary["heldout"]) == (5, 3)
    prompts = read_records(tmp_path / "task" / "test.jsonl")
    assert {c.family for p in prompts for c in p.constraints} <= set(families)
