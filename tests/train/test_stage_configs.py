"""Each script refuses another stage's config, naming the config and the file it expects."""

import subprocess
import sys

import pytest

from instructjax.testing.experiments import load_experiment_config
from instructjax.train.config import STAGE_FIELDS, check_stage_config

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
