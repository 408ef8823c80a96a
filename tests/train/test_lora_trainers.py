"""LoRA in the reward model and DPO trainers; refused by PPO."""

import math

import pytest

from instructjax import checkpoints
from instructjax.models import lora
from instructjax.testing.experiments import load_experiment_config, run_experiment
from instructjax.train.export import ADAPTER_DIR
from instructjax.train.metrics import read_metrics
from instructjax.train.ppo import train_ppo

FLAGS = ("--config.num_steps=2", "--config.eval.every_steps=0", "--config.lora.rank=4")


def test_dpo_with_lora_starts_at_the_reference_and_exports_the_adapter(tmp_path):
    run_experiment("dpo", tmp_path / "dpo", tmp_path / "dpo.log", *FLAGS, timeout_s=300)
    first = read_metrics(tmp_path / "dpo" / "metrics.jsonl")[0]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference: adapters at zero
    assert (tmp_path / "dpo" / "export" / ADAPTER_DIR / "adapter_model.safetensors").is_file()


def test_reward_model_with_lora_exports_a_merged_classifier(tmp_path):
    run_experiment("reward", tmp_path / "rm", tmp_path / "rm.log", *FLAGS, timeout_s=300)
    _, params = checkpoints.load_hf(tmp_path / "rm" / "export")
    assert "score_head" in params and not lora.has_adapters(params)


def test_ppo_refuses_lora_naming_the_key(tmp_path):
    config = load_experiment_config("ppo", "tiny", {"lora.rank": 4})
    with pytest.raises(ValueError, match=r"--config.lora.rank=4: LoRA is not supported by PPO"):
        train_ppo(config, tmp_path / "ppo")
    assert not (tmp_path / "ppo").exists()  # refused before anything is written
