"""LoRA in the reward model, DPO, PPO and GRPO trainers."""

import math

import jax
import pytest

from instructjax import checkpoints
from instructjax.models import lora
from instructjax.testing.experiments import (assert_same_run, kill_after_checkpoint, load_experiment_config,
                                              run_experiment)
from instructjax.train.export import ADAPTER_DIR
from instructjax.train.metrics import read_metrics
from instructjax.train.dpo import train_dpo
from instructjax.train.ppo import train_ppo
from instructjax.train.reward import train_reward_model

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


@pytest.mark.parametrize("name", ["ppo", "grpo"])
def test_rl_with_lora_trains_the_adapters_against_the_base_model_as_reference(tmp_path, name):
    config = load_experiment_config(name, "tiny", {"lora.rank": 4, "num_steps": 3, "eval.every_steps": 0})
    state = train_ppo(config, tmp_path / name)
    kl = [m["train/kl"] for m in read_metrics(tmp_path / name / "metrics.jsonl")]
    # the reference is the base model: KL 0 while the adapters are zero, then growing as they train (a
    # reference that kept the adapters would stay at KL 0)
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[2] > 1e-3
    # only the adapters (and a value head on the trunk) have optimizer state
    moments = sum(x.size for x in jax.tree.leaves(state.policy.opt_state))
    adapters = sum(x.size for x in jax.tree.leaves(lora.adapters(state.policy.params)))
    assert moments < 2 * adapters + 1000 < sum(x.size for x in jax.tree.leaves(state.policy.params))
    assert (tmp_path / name / "export" / ADAPTER_DIR / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("stage, train, reason", [
    ("ppo", train_ppo, "every PPO forward runs without dropout"),
    ("reward", train_reward_model, "the reward model trains and scores without dropout"),
    ("dpo", train_dpo, "DPO trains without dropout")])
def test_trainers_without_dropout_refuse_lora_dropout_naming_the_key(tmp_path, stage, train, reason):
    config = load_experiment_config(stage, "tiny", {"lora.rank": 4, "lora.dropout": 0.1})
    with pytest.raises(ValueError, match=rf"--config.lora.dropout=0.1: {reason}"):
        train(config, tmp_path / stage)
    assert not (tmp_path / stage).exists()  # refused before anything is written


def test_ppo_with_lora_resumes_after_sigkill_bit_exact(tmp_path):
    flags = ("--config.num_steps=4", "--config.checkpoint.every_steps=2", "--config.eval.every_steps=0",
             "--config.lora.rank=4", "--config.debug.step_delay_s=1.0")  # time to kill between checkpoints
    run_experiment("ppo", tmp_path / "reference", tmp_path / "reference.log", *flags, timeout_s=300)
    process = run_experiment("ppo", tmp_path / "run", tmp_path / "killed.log", *flags, wait=False)
    kill_after_checkpoint(process, tmp_path / "run" / "checkpoints" / "2", timeout_s=240)
    assert not (tmp_path / "run" / "export").exists()
    run_experiment("ppo", tmp_path / "run", tmp_path / "resumed.log", *flags, timeout_s=300)
    assert "resum" in (tmp_path / "resumed.log").read_text().lower()
    assert_same_run(tmp_path / "run", tmp_path / "reference")
