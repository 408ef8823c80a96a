"""The whole InstructGPT pipeline on the tiny preset: every stage runs, the report is written, a
rerun skips finished stages, an interrupted sampling stage resumes with the same samples, the
demonstrations stage's "edit" source turns the same samples into demonstrations that pass, the PPO
stage honours a reward-function source, and 2 processes run it as one."""

import json
import shutil

import jax
import numpy as np
import pytest

import instructjax as ij
from instructjax.pipeline import stages
from instructjax.pipeline.files import sample_to_file
from instructjax.testing.experiments import load_experiment_config, run_processes
from instructjax.train import read_metrics
from instructjax.evaluation.generation import SamplingConfig
from instructjax.labelers.demonstrator import MIN_CLOSENESS
from instructjax.tasks.constraints import make_constraint
from instructjax.tasks.instructions import TaskPrompt, read_records


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    config = load_experiment_config("pipeline", "tiny")
    return workdir, config, ij.pipeline.run_pipeline(config, workdir)


def test_tiny_pipeline_runs_every_stage(finished_run):
    workdir, config, summaries = finished_run
    assert list(summaries) == list(stages.pipeline_stages(config)) == [
        "task", "demonstrations", "sft", "comparisons", "reward", "ppo", "ppo_ptx", "evaluation"]
    for stage in summaries:
        assert (workdir / stage / "stage.json").is_file()
    for stage in ("sft", "reward", "ppo", "ppo_ptx"):
        assert (workdir / stage / "export" / "config.json").is_file()
        data = summaries[stage]["data"]  # records read, truncated and dropped per reason, as logged last
        assert data["records"] > 0 and data["truncated"] >= 0, (stage, data)
        assert all(key in ("records", "truncated") or key.startswith("dropped_") for key in data), data
    assert summaries["ppo"]["ptx_gamma"] == 0.0 and summaries["ppo_ptx"]["ptx_gamma"] == 1.0
    evaluation = summaries["evaluation"]
    assert evaluation["num_test_prompts"] == evaluation["num_kl_prompts"] == 16
    assert evaluation["num_heldout_prompts"] == 16
    assert list(evaluation["models"]) == ["initial", "sft", "ppo", "ppo_ptx"]
    for result in evaluation["models"].values():
        for split in ("test", "heldout"):
            overall = result[split]["pass_rates"]["overall"]
            assert overall["total"] == 16 and 0.0 <= overall["low"] <= overall["value"] <= overall["high"] <= 1.0
        assert result["perplexity"] > 1.0
    heldout_families = {f for r in evaluation["models"].values() for f in r["heldout"]["pass_rates"]} - {"overall"}
    trained_families = {f for r in evaluation["models"].values() for f in r["test"]["pass_rates"]} - {"overall"}
    assert heldout_families == set(config.task.heldout_families) and not heldout_families & trained_families
    for split in ("test", "heldout"):
        assert set(evaluation["paired_tests"][split]) == {"sft_vs_initial", "ppo_vs_sft", "ppo_ptx_vs_sft",
                                                          "ppo_vs_initial", "ppo_ptx_vs_initial"}
        for test in evaluation["paired_tests"][split].values():
            assert 0.0 <= test["p_value"] <= 1.0 and test["prompts"] == 16
    reward = evaluation["reward_model"]  # held-out RM accuracy per constraint family of the pair's prompt
    families = reward["families"]
    assert families and set(families) <= set(ij.tasks.FAMILIES)
    assert sum(rate["total"] for rate in families.values()) >= reward["pairs"] > 0  # every pair has a family
    assert all(0.0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1.0 for rate in families.values())
    agreement = evaluation["reward_agreement"]  # the RM against the labeler on the policies' test responses
    assert list(agreement) == ["all", "sft_vs_initial", "ppo_vs_sft", "ppo_ptx_vs_sft"]
    assert agreement["ppo_vs_sft"]["total"] <= 16 and agreement["all"]["total"] <= 16 * 6
    assert sum(rate["total"] for key, rate in agreement.items() if key != "all") <= agreement["all"]["total"]
    elo = evaluation["elo"]  # every policy ranked from the labeler's judgements of each pair on the test prompts
    assert list(elo["ratings"]) == list(evaluation["models"]) and elo["prompts"] == 16
    assert elo["reference"] == "initial" and elo["ratings"]["initial"]["rating"] == 1000.0
    for rating in elo["ratings"].values():
        assert rating["low"] <= rating["rating"] <= rating["high"] and rating["games"] == 16 * 3
    assert summaries["task"]["pretraining_texts"] == 48 and summaries["task"]["pretraining_heldout_texts"] == 16
    for stage in ("ppo", "ppo_ptx"):  # the validation curve: gold and proxy at each evaluated iteration
        points = ij.evaluation.report.overoptimization_points(workdir / stage)
        assert len(points) == 1 + config.ppo.num_steps and all(0.0 <= p[1] <= 1.0 for p in points)
        assert points[0][0] == 0.0  # the SFT policy's point


def test_report_has_tables_plots_and_samples(finished_run):
    workdir, *_ = finished_run
    report = (workdir / "report.md").read_text()
    for heading in ("## Constraint pass rate", "## Policies", "## RL runs", "## Sample responses", "Win rate of PPO",
                    "KL(PPO || SFT)", "KL(PPO-ptx || SFT)", "## Alignment tax", "McNemar", "held-out docstrings",
                    "## Reward model", "| family | pairs | accuracy |", "## Elo ratings", "- PPO against SFT: ",
                    "Agreement with the labeler on the evaluated policies' own test responses",
                    "| rank | policy | Elo | 95% interval | games |"):
        assert heading in report
    for plot in ("report_ppo.png", "report_reward_model.png", "report_pass_rates.png",
                 "report_overoptimization.png", "report_elo.png"):
        assert plot in report and (workdir / plot).stat().st_size > 1000
    comparisons = [json.loads(line) for line in open(workdir / "comparisons" / "comparisons.jsonl")]
    assert comparisons and all(len(r["completions"]) == len(r["ranking"]) >= 2 for r in comparisons)


def test_rerun_skips_finished_stages(finished_run, monkeypatch):
    workdir, config, summaries = finished_run
    for name in ("task_stage", "demonstrations_stage", "sft_stage", "comparisons_stage", "reward_stage",
                 "policy_stage", "ppo_ptx_stage", "evaluation_stage"):
        monkeypatch.setattr(stages, name, lambda *args, name=name, **kwargs: pytest.fail(f"{name} ran again"))
    again = ij.pipeline.run_pipeline(config, workdir)
    assert again == json.loads(json.dumps(summaries))


def test_rerun_with_another_config_is_refused(finished_run):
    workdir, config, *_ = finished_run
    changed = load_experiment_config("pipeline", "tiny", {"task.num_test": 17})
    with pytest.raises(ValueError, match="task.num_test"):
        ij.pipeline.run_pipeline(changed, workdir)


def test_sampling_stage_resumes_after_a_torn_write(finished_run, tmp_path):
    workdir, config, *_ = finished_run
    cfg, params = ij.checkpoints.load_hf(workdir / "sft" / "export")
    tokenizer = ij.tokenizers.Tokenizer.from_pretrained(workdir / "sft" / "export")
    prompts = [f"prompt number {i}" for i in range(10)]
    sampling = SamplingConfig(k=2, max_new_tokens=6, temperature=1.0, batch_size=4)
    whole = sample_to_file(tmp_path / "whole.jsonl", cfg, params, tokenizer, prompts, sampling, jax.random.key(3), "t")
    lines = (tmp_path / "whole.jsonl").read_text().splitlines()
    assert len(lines) == 3  # batches of 4, 4, 2 prompts
    (tmp_path / "cut.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # killed while writing batch 2
    resumed = sample_to_file(tmp_path / "cut.jsonl", cfg, params, tokenizer, prompts, sampling, jax.random.key(3), "t")
    assert resumed.texts == whole.texts
    assert (resumed.ended == whole.ended).all() and (resumed.lengths == whole.lengths).all()


def test_human_labeler_waits_for_the_labeling_tool_then_uses_its_answers(finished_run, tmp_path):
    workdir, *_ = finished_run
    for stage in ("task", "demonstrations", "sft"):
        shutil.copytree(workdir / stage, tmp_path / stage)
    config = load_experiment_config("pipeline", "tiny", {"comparisons.labeler": "human"})
    with pytest.raises(ij.pipeline.LabelingNeeded, match="experiments/label.py"):
        ij.pipeline.run_pipeline(config, tmp_path)
    candidates = tmp_path / "comparisons" / "candidates.jsonl"
    # a person who always puts the second completion first, then the others in order
    sizes = [len(json.loads(line)["completions"]) for line in open(candidates)]
    answers = iter(" ".join(["b", "a", *"cdefgh"[:k - 2]]) for k in sizes)
    ij.labelers.label_session(candidates, tmp_path / "comparisons" / "human.jsonl",
                              input_fn=lambda _: next(answers), print_fn=lambda *a, **k: None)
    summary = stages.comparisons_stage(config.copy_and_resolve_references(), tmp_path)
    records = [json.loads(line) for line in open(tmp_path / "comparisons" / "comparisons.jsonl")]
    assert summary["labeler"] == "human" and summary["records"] == len(records) > 0
    assert all(r["ranking"][1] == 0 for r in records)


def test_edited_demonstrations_meet_every_constraint(finished_run, tmp_path):
    workdir, config, summaries = finished_run
    assert summaries["demonstrations"]["source"] == config.demonstrations.source == "best_of_k"  # tiny: fast
    for preset in ("quick", "full", "hf"):
        assert load_experiment_config("pipeline", preset).demonstrations.source == "edit"
    shutil.copytree(workdir / "task", tmp_path / "task")
    (tmp_path / "demonstrations").mkdir()
    shutil.copy(workdir / "demonstrations" / "samples.jsonl", tmp_path / "demonstrations")  # the same K samples
    edit = load_experiment_config("pipeline", "tiny", {"demonstrations.source": "edit"}).copy_and_resolve_references()
    summary = stages.demonstrations_stage(edit, tmp_path)
    prompts = {p.prompt: p for p in read_records(tmp_path / "task" / "sft.jsonl")}
    records = [json.loads(line) for line in open(tmp_path / "demonstrations" / "demonstrations.jsonl")]
    best_of_k = [json.loads(line) for line in open(workdir / "demonstrations" / "demonstrations.jsonl")]
    passing_best = sum(all(c.check(r["response"]) for c in prompts[r["prompt"]].constraints) for r in best_of_k)
    assert summary["source"] == "edit" and summary["kept"] == len(records) > passing_best
    assert summary["kept"] + summary["not_kept"] == sum(summary["outcomes"].values()) == len(prompts)
    assert set(summary["outcomes"]) <= {"edited", "unchanged", "edit_failed", "no_sample"}
    for record in records:
        assert set(record) == {"prompt", "response"}
        assert all(c.check(record["response"]) for c in prompts[record["prompt"]].constraints), record
    assert MIN_CLOSENESS <= summary["closeness"]["min"] <= summary["closeness"]["mean"] <= 1.0


def test_edit_source_edits_the_best_finished_sample():
    prompt = TaskPrompt.create("Give me some advice about growing tomatoes.", "growing tomatoes",
                               [make_constraint("lowercase")])
    labeler, demonstrator = ij.labelers.ConstraintLabeler([prompt]), ij.labelers.ConstraintDemonstrator()
    texts = ["tomatoes need full sun and water every day. they grow", "Tomatoes grow well."]
    made = stages._edited(demonstrator, labeler, prompt, texts, [False, True])  # the labeler prefers the first
    assert (made.response, made.outcome) == ("tomatoes grow well.", "edited")
    made = stages._edited(demonstrator, labeler, prompt, texts, [False, False])  # none finished: cut back
    assert (made.response, made.outcome) == ("tomatoes need full sun and water every day.", "edited")
    made = stages._edited(demonstrator, labeler, prompt, ["tomatoes grow well.", "Tomatoes."], [True, True])
    assert (made.response, made.outcome, made.closeness) == ("tomatoes grow well.", "unchanged", 1.0)
    assert stages._edited(demonstrator, labeler, prompt, ["", " "], [True, True]).outcome == "no_sample"
    assert stages._edited(demonstrator, labeler, prompt, ["123.", "4 5."], [True, True]).outcome == "edit_failed"


def test_ppo_stage_with_reward_functions_needs_no_reward_model(finished_run, tmp_path):
    workdir, *_ = finished_run
    assert json.loads((workdir / "ppo" / "config.json").read_text())["reward"]["path"] == str(workdir / "reward")
    for stage in ("task", "sft"):  # what the PPO stage reads; no reward stage
        shutil.copytree(workdir / stage, tmp_path / stage)
    function = "instructjax.tasks.rewards:constraint_fraction"
    config = load_experiment_config("pipeline", "tiny", {"ppo.reward.source": "function",
                                                         "ppo.reward.function": function,
                                                         "ppo.value.init": "policy"})  # tiny's "reward": no RM
    stages.policy_stage(config.copy_and_resolve_references(), tmp_path)
    reward = json.loads((tmp_path / "ppo" / "config.json").read_text())["reward"]
    assert (reward["source"], reward["function"], reward["path"]) == ("function", function, "")
    records = [r for r in read_metrics(tmp_path / "ppo" / "metrics.jsonl") if "train/score" in r]  # not eval/
    assert len(records) == config.ppo.num_steps
    assert all(0.0 <= r["train/score/constraint_fraction"] <= 1.0 for r in records)
    assert "train/score/model" not in records[0]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "dpo"])
def test_each_algorithm_runs_two_rounds(finished_run, tmp_path, algorithm):
    workdir, *_ = finished_run
    for stage in ("task", "demonstrations", "sft", "comparisons", "reward"):  # round 1's data, as finished
        shutil.copytree(workdir / stage, tmp_path / stage)
    compare = (f"ppo={workdir / 'ppo'}",) if algorithm == "grpo" else ()  # another run's policy beside these
    config = load_experiment_config("pipeline", "tiny", {"algorithm": algorithm, "rounds": 2, "ppo_ptx.gamma": 0.0,
                                                         "evaluation.compare": compare, "evaluation.kl_prompts": 4})
    summaries = ij.pipeline.run_pipeline(config, tmp_path)
    later = ["comparisons_r2", *(["reward_r2"] if algorithm != "dpo" else []), f"{algorithm}_r2"]
    assert list(summaries) == ["task", "demonstrations", "sft", "comparisons", "reward", algorithm, "ppo_ptx",
                               *later, "evaluation"]
    assert summaries["comparisons_r2"]["policy"] == algorithm  # round 2 samples round 1's policy
    assert summaries[f"{algorithm}_r2"]["started_from"] == algorithm
    if algorithm != "dpo":
        assert summaries[algorithm]["advantage"] == algorithm
        files = json.loads((tmp_path / "reward_r2" / "config.json").read_text())["data"]["train_files"]
        assert files == [str(tmp_path / name / "comparisons.jsonl") for name in ("comparisons", "comparisons_r2")]
    evaluation = summaries["evaluation"]
    compared = ["ppo"] if compare else []
    assert list(evaluation["models"]) == ["initial", "sft", algorithm, f"{algorithm}_r2", *compared]
    assert f"{algorithm}_r2_vs_{algorithm}" in evaluation["paired_tests"]["test"]
    assert set(evaluation["win_rates"]) == {"sft_vs_initial", f"{algorithm}_vs_sft", f"{algorithm}_r2_vs_{algorithm}",
                                            *(f"{n}_vs_sft" for n in compared)}
    assert set(evaluation["kl_to_sft"]) == {algorithm, f"{algorithm}_r2", *compared}
    assert evaluation["num_kl_prompts"] == 4  # the first 4 of the 16 test prompts
    if compare:  # the same export, sampled the same way: the same responses as in its own run
        ours = [json.loads(line) for line in open(tmp_path / "evaluation" / "responses_ppo.jsonl")]
        theirs = [json.loads(line) for line in open(workdir / "evaluation" / "responses_ppo.jsonl")]
        assert ours == theirs
    assert list(evaluation["elo"]["ratings"]) == list(evaluation["models"])  # every policy ranked
    report = (tmp_path / "report.md").read_text()
    assert f"{algorithm.upper()} round 2" in report


def test_two_processes_run_the_pipeline_as_one(finished_run, tmp_path):
    """One job of 2 processes x 4 fake CPU devices on 127.0.0.1 runs every stage: the sampling and scoring
    batches dealt over the processes, the training stages on a mesh spanning both, process 0 writing the
    files. What does not depend on training is what this process's run on 8 devices wrote, byte for byte:
    the task, the initial model's samples and the demonstrations made of them (each batch's draws, gathered
    in order), the initial model's evaluation responses, pass rates and perplexity. (The trained models
    differ: 26 demonstrations are not a multiple of SFT's batch, so each process's blocks of the data wrap
    around the epoch differently from one process's, docs/data.md; the trainers on 2 processes equal 1 on
    the same batches: tests/train/test_multiprocess.py.)"""
    workdir, config, summaries = finished_run
    two = tmp_path / "two"
    (tmp_path / "logs").mkdir()
    run_processes("pipeline", two, tmp_path / "logs", timeout_s=600)
    assert "Rank 1 is connected" in (tmp_path / "logs" / "process_1.log").read_text()  # gloo collectives
    for stage in summaries:
        assert (two / stage / "stage.json").is_file()
    for file in ("task/test.jsonl", "task/ppo_prompts.jsonl", "demonstrations/samples.jsonl",
                 "demonstrations/demonstrations.jsonl", "evaluation/responses_initial.jsonl",
                 "evaluation/responses_initial_heldout.jsonl"):
        assert (two / file).read_text() == (workdir / file).read_text(), file
    got = json.loads((two / "evaluation" / "stage.json").read_text())["summary"]
    want = json.loads(json.dumps(summaries["evaluation"]))
    assert sorted(got["models"]) == sorted(want["models"]) and got["elo"]["prompts"] == want["elo"]["prompts"]
    initial, expected = got["models"]["initial"], want["models"]["initial"]
    assert initial["perplexity"] == expected["perplexity"]
    for split in ("test", "heldout"):  # (the reward-model score is not compared: each run trained its own)
        assert initial[split]["pass_rates"] == expected[split]["pass_rates"], split
    assert initial["test"]["length"] == expected["test"]["length"]
    report = (two / "report.md").read_text()
    assert "## Elo ratings" in report and (two / "report_elo.png").is_file()
