"""Each script refuses another stage's config, naming the config and the file it expects."""

import subprocess
import sys

import pytest

from instructjax.testing.experiments import load_experiment_config
from instructjax.train.config import STAGE_FIELDS, check_stage_config, resolve_dtypes

CONFIGS = ("sft", "reward", "dpo", "ppo", "grpo", "pipeline")


@pytest.mark.parametrize("stage", sorted(STAGE_FIELDS))
@pytest.mark.parametrize("given", CONFIGS)
def test_only_the_stages_own_config_is_accepted(stage, given):
    config, source = load_experiment_config(given, "tiny"), f"experiments/configs/{given}.py:tiny"
    if given == stage or (stage, given) == ("ppo", "grpo"):
        check_stage_config(config, stage, source)
    else:
        with pytest.raises(ValueError, match=rf"--config={source} is not a {stage} config .*experiments/configs/"):
            check_stage_config(config, stage, source)


@pytest.mark.parametrize("script", ["ppo", "grpo"])
def test_script_names_the_wrong_config(script, tmp_path):
    result = subprocess.run([sys.executable, f"experiments/{script}.py", "--config=experiments/configs/sft.py:tiny",
                             f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert ("--config=experiments/configs/sft.py:tiny is not a ppo config (it has no ppo, rollout): "
            "use experiments/configs/ppo.py or grpo.py:<preset>") in result.stderr
    assert "AttributeError" not in result.stderr


@pytest.mark.parametrize("native, expected", [("1", "bfloat16"), ("0", "float32")])
def test_auto_dtypes_follow_the_cpu_and_explicit_ones_are_kept(monkeypatch, caplog, native, expected):
    monkeypatch.setenv("INSTRUCTJAX_NATIVE_BF16", native)  # the decision of a CPU with / without native bf16
    config = load_experiment_config("pipeline", "quick", {"sft.model.dtype": "float32"})
    with caplog.at_level("INFO"):
        resolved = resolve_dtypes(config)
    assert resolved.reward.model.dtype == resolved.ppo.rollout.dtype == resolved.evaluation.dtype == expected
    assert resolved.sft.model.dtype == "float32"  # given explicitly
    assert config.reward.model.dtype == "auto"  # the caller's config is not changed
    assert f"compute dtype 'auto' -> {expected}" in caplog.text
    assert "auto" not in repr(resolve_dtypes(load_experiment_config("ppo", "smollm2")).to_dict())
