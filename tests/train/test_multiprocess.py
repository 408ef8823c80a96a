"""One job of 2 processes x 4 fake CPU devices on 127.0.0.1 against 1 process x 8 devices. SFT, reward
model, DPO, PPO: the same metrics and export, to float rounding (the gradient all-reduce runs over gloo
between the processes; PPO's sampling, scoring and update on arrays spanning both processes).
SFT and PPO: a job whose processes are all SIGKILLed after a checkpoint resumes to exactly the uninterrupted
2-process run."""

import pathlib

import jax
import numpy as np
import pytest

from instructjax import checkpoints, datasets
from instructjax.testing.experiments import (assert_same_run, kill_after_checkpoint, load_experiment_config,
                                              run_experiment, run_processes, without_timings)
from instructjax.train import Workdir, read_metrics

# Per stage: short runs of the tiny presets (flags) and the checkpoint after which the processes are killed.
STAGES = {
    "sft": (("--config.num_steps=12", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=12",
             "--config.eval.max_new_tokens=8"), "4"),
    # without PPO-ptx: packed text rows are cut from each process's own stream (docs/data.md)
    # every prompt fits (the tiny preset's 64-token rows drop 10 of the 26): no process's blocks shift;
    # the prompts (`stage_flags`) are two whole batches, so every epoch starts at a batch on 1 and 2 processes
    "ppo": (("--config.num_steps=4", "--config.checkpoint.every_steps=2", "--config.samples.every_steps=2",
             "--config.data.max_prompt_len=512"), "2"),
}
PPO_PROMPTS = 32  # two batches of the tiny preset's 16 prompts
# Shares of tokens at a clip boundary: rounding moves a token across it (one of 128 is 0.008), and tokens
# whose values sit at the same distance from it move together (4 of 128 in one step on an Intel Xeon with AMX).
BOUNDARY_COUNTS = ("train/clip_frac", "train/value_clip_frac")
BOUNDARY_ATOL = 0.05


def stage_flags(stage, tmp_path):
    """STAGES' flags of `stage`; PPO's on the first PPO_PROMPTS of the shipped prompts (written to tmp_path):
    with a count that is not a multiple of the batch, each process's blocks would wrap around the epoch
    differently from one process's (docs/data.md) and later iterations would read other prompts."""
    flags, _ = STAGES[stage]
    if stage != "ppo":
        return flags
    prompts = tmp_path / "prompts.jsonl"
    lines = (pathlib.Path(datasets.EXAMPLES_DIR) / "prompts.jsonl").read_text().splitlines()[:PPO_PROMPTS]
    prompts.write_text("\n".join(lines) + "\n")
    return (*flags, f"--config.data.train_files=('{prompts}',)")


def assert_close(got, want, keys, step):
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=1e-4, atol=1e-5,
                               err_msg=f"step {step}: {keys}")


def assert_close_run(workdir, reference, params_atol=1e-5):
    """The same metrics (wall-clock aside; the BOUNDARY_COUNTS within BOUNDARY_ATOL) and exported params, to float
    rounding (`params_atol`: PPO's Adam turns rounding in a rarely seen embedding row's tiny gradient into
    a difference of up to ~1% of one step, 3e-5 at the tiny preset's learning rate of 3e-3)."""
    got, want = (without_timings(read_metrics(w / "metrics.jsonl")) for w in (workdir, reference))
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want):
        exact = sorted(k for k in g if k not in BOUNDARY_COUNTS)
        assert_close(g, w, exact, g["step"])
        counts = [k for k in BOUNDARY_COUNTS if k in g]
        np.testing.assert_allclose([g[k] for k in counts], [w[k] for k in counts], atol=BOUNDARY_ATOL,
                                   err_msg=f"step {g['step']}: {counts}")
    _, params = checkpoints.load_hf(workdir / "export")
    _, expected = checkpoints.load_hf(reference / "export")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=params_atol), params, expected)


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_equal_one_and_resume_exactly(tmp_path, stage):
    flags, first_checkpoint = stage_flags(stage, tmp_path), STAGES[stage][1]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    for log_dir in ("two_logs", "killed_logs", "resumed_logs"):  # one per job: its own compilation cache
        (tmp_path / log_dir).mkdir()
    run_experiment(stage, one, tmp_path / "one.log", *flags, devices=8, timeout_s=300)
    run_processes(stage, two, tmp_path / "two_logs", *flags, timeout_s=300)
    assert_close_run(two, one, params_atol=1e-4 if stage == "ppo" else 1e-5)
    assert "Rank 1 is connected" in (tmp_path / "two_logs" / "process_1.log").read_text()  # gloo collectives

    slow = "--config.debug.step_delay_s=1.0"  # time to kill the run between two checkpoints
    running = run_processes(stage, killed, tmp_path / "killed_logs", *flags, slow, wait=False)
    kill_after_checkpoint(running, killed / "checkpoints" / first_checkpoint, timeout_s=300)
    assert not (killed / "export").exists()
    run_processes(stage, killed, tmp_path / "resumed_logs", *flags, slow, timeout_s=300)
    assert "resumed from" in (tmp_path / "resumed_logs" / "process_1.log").read_text()
    assert_same_run(killed, two)


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_reward_model_and_dpo_on_two_processes_equal_one(tmp_path, stage):
    """The comparison trainers: the same metrics (the evaluation included) and export (the reward model's
    normalisation included) as one process, to float rounding. The tiny presets drop records (too long, too
    many completions) in training, the evaluation, the normalisation and DPO's reference pass: each process
    drops its own, so finite passes end at different batches on the two (`data.loader.BatchIterator`), and
    from the third step on the training batches differ (a drop shifts the blocks a process reads after it)."""
    flags = ("--config.num_steps=2", "--config.eval.every_steps=2", "--config.checkpoint.every_steps=2")
    (tmp_path / "two_logs").mkdir()
    run_experiment(stage, tmp_path / "one", tmp_path / "one.log", *flags, devices=8, timeout_s=300)
    run_processes(stage, tmp_path / "two", tmp_path / "two_logs", *flags, timeout_s=300)
    assert_close_run(tmp_path / "two", tmp_path / "one")


def test_a_workdir_accepts_other_placements_of_the_same_run(tmp_path):
    """Each process (and a restart on another coordinator) checks config.json, written by process 0."""
    placed = {"parallel.multi_host": True, "parallel.coordinator_address": "127.0.0.1:1234",
              "parallel.num_processes": 2, "parallel.process_id": 0}
    Workdir.at(tmp_path).write_config(load_experiment_config("sft", overrides=placed))
    moved = {**placed, "parallel.coordinator_address": "10.0.0.2:555", "parallel.process_id": 1}
    Workdir.at(tmp_path).write_config(load_experiment_config("sft", overrides=moved))
    with pytest.raises(ValueError, match="parallel.num_processes: 2 -> 4"):
        Workdir.at(tmp_path).write_config(load_experiment_config("sft", overrides={**placed,
                                                                                 "parallel.num_processes": 4}))
