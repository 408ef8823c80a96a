"""The whole InstructGPT pipeline on the tiny preset: every stage runs, the report is written, a
rerun skips finished stages, and an interrupted sampling stage resumes with the same samples."""

import json
import shutil

import jax
import pytest

import instructjax as ij
from instructjax.pipeline import stages
from instructjax.pipeline.files import sample_to_file
from instructjax.testing.experiments import load_experiment_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    config = load_experiment_config("pipeline", "tiny")
    return workdir, config, ij.pipeline.run_pipeline(config, workdir)


def test_tiny_pipeline_runs_every_stage(finished_run):
    workdir, _, summaries = finished_run
    assert list(summaries) == list(ij.pipeline.STAGES)
    for stage in ij.pipeline.STAGES:
        assert (workdir / stage / "stage.json").is_file()
    for stage in ("sft", "reward", "ppo"):
        assert (workdir / stage / "export" / "config.json").is_file()
    evaluation = summaries["evaluation"]
    assert evaluation["num_test_prompts"] == 16
    assert set(evaluation["models"]) == set(ij.pipeline.POLICIES)
    for result in evaluation["models"].values():
        overall = result["pass_rates"]["overall"]
        assert overall["total"] == 16 and 0.0 <= overall["low"] <= overall["value"] <= overall["high"] <= 1.0
    assert summaries["task"]["pretraining_texts"] == 64


def test_report_has_tables_plots_and_samples(finished_run):
    workdir, *_ = finished_run
    report = (workdir / "report.md").read_text()
    for heading in ("## Constraint pass rate", "## Policies", "## PPO", "## Sample responses", "Win rate of PPO",
                    "KL(PPO || SFT)"):
        assert heading in report
    for plot in ("report_ppo.png", "report_reward_model.png", "report_pass_rates.png"):
        assert plot in report and (workdir / plot).stat().st_size > 1000
    comparisons = [json.loads(line) for line in open(workdir / "comparisons" / "comparisons.jsonl")]
    assert comparisons and all(len(r["completions"]) == len(r["ranking"]) >= 2 for r in comparisons)


def test_rerun_skips_finished_stages(finished_run, monkeypatch):
    workdir, config, summaries = finished_run
    for name in ij.pipeline.STAGES:
        monkeypatch.setitem(ij.pipeline.STAGES, name, lambda *args, name=name: pytest.fail(f"stage {name} ran again"))
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
    sampling = ij.evaluation.SamplingConfig(k=2, max_new_tokens=6, temperature=1.0, batch_size=4)
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
