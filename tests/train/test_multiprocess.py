"""One job of 2 processes x 4 fake CPU devices on 127.0.0.1 against 1 process x 8 devices. SFT, reward
model, DPO: the same metrics and export, to float rounding (the gradient all-reduce runs over gloo between
the processes).
PPO: the same first iteration (sampling, scoring and the update on arrays spanning both processes).
Both: a job whose processes are all SIGKILLed after a checkpoint resumes to exactly the uninterrupted
2-process run."""

import jax
import numpy as np
import pytest

from instructjax import checkpoints
from instructjax.testing.experiments import (assert_same_run, kill_after_checkpoint, load_experiment_config,
                                              run_experiment, run_processes, without_timings)
from instructjax.train import Workdir, read_metrics

# Per stage: short runs of the tiny presets (flags) and the checkpoint after which the processes are killed.
STAGES = {
    "sft": (("--config.num_steps=12", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=12",
             "--config.eval.max_new_tokens=8"), "4"),
    # without PPO-ptx: packed text rows are cut from each process's own stream (docs/data.md)
    # every prompt fits (the tiny preset's 64-token rows drop 10 of the 26): no process's blocks shift
    "ppo": (("--config.num_steps=4", "--config.checkpoint.every_steps=2", "--config.samples.every_steps=2",
             "--config.data.max_prompt_len=512"), "2"),
}


# PPO: the first iteration's metrics, the update's included (gradient norms, losses). Later iterations
# read other prompts on 2 processes than on 1: the 26 prompts are not a multiple of the batch of 16, so
# each process's blocks wrap around the epoch differently (docs/data.md).


def assert_close(got, want, keys, step):
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=1e-4, atol=1e-5,
                               err_msg=f"step {step}: {keys}")


def assert_close_run(stage, workdir, reference):
    """SFT, reward model, DPO: the same metrics (wall-clock aside) and exported params, to float rounding.
    PPO: the same metrics of the first iteration."""
    got, want = (without_timings(read_metrics(w / "metrics.jsonl")) for w in (workdir, reference))
    if stage == "ppo":
        assert sorted(got[0]) == sorted(want[0])
        assert_close(got[0], want[0], sorted(got[0]), 1)
        return
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want):
        assert_close(g, w, sorted(g), g["step"])
    _, params = checkpoints.load_hf(workdir / "export")
    _, expected = checkpoints.load_hf(reference / "export")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, expected)


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_equal_one_and_resume_exactly(tmp_path, stage):
    flags, first_checkpoint = STAGES[stage]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    for log_dir in ("two_logs", "killed_logs", "resumed_logs"):  # one per job: its own compilation cache
        (tmp_path / log_dir).mkdir()
    run_experiment(stage, one, tmp_path / "one.log", *flags, devices=8, timeout_s=300)
    run_processes(stage, two, tmp_path / "two_logs", *flags, timeout_s=300)
    assert_close_run(stage, two, one)
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
    assert_close_run(stage, tmp_path / "two", tmp_path / "one")


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
