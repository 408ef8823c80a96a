"""experiments/grpo.py: the PPO trainer with a group baseline, from the command line."""

import pathlib
import subprocess
import sys

import pytest

from instructjax.testing.experiments import load_experiment_config
from instructjax.train import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", ["tiny", "smollm2"])
def test_presets_are_group_baselines_without_a_value_function(preset):
    config = load_experiment_config("grpo", preset)
    assert config.advantage == "grpo" and config.rollout.group_size >= 2 and config.kl.in_loss
    with pytest.raises(ValueError, match="unknown grpo preset"):
        load_experiment_config("grpo", "huge")


def test_command_line_runs_rloo_and_logs_no_value_metrics(tmp_path):
    workdir = tmp_path / "run"
    subprocess.run([sys.executable, "experiments/grpo.py", "--config=experiments/configs/grpo.py:tiny",
                    f"--workdir={workdir}", "--config.advantage=rloo", "--config.num_steps=2",
                    "--config.checkpoint.every_steps=2"], cwd=REPO, check=True, timeout=600)
    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert "train/kl_loss" in records[0] and "train/value_loss" not in records[0]
    assert (workdir / "export" / "model.safetensors").exists()
