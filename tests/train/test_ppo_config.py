"""PPO honours its config or refuses it (#14): a setting PPO would not read stops the run before the
workdir is written, naming the key; `debug.nan_at_step` trips the NaN guard, which also watches the
policy's and the value network's gradient norms; a separate value network gets the policy's model
settings (remat, scan, frozen layers, dtypes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import instructjax as ij
from instructjax.pipeline import stages
from instructjax.rewards.scoring import reward_params_from_lm
from instructjax.testing import tiny_tokenizer
from instructjax.testing.experiments import load_experiment_config
from instructjax.train import NonFiniteLossError, Workdir, loop, read_metrics
from instructjax.train.initial_model import with_overrides
from instructjax.train.ppo import check_config, init_value, train_ppo
from instructjax.models.functional import init_params
from instructjax.rewards.io import export_reward_model
from instructjax.rl.forwards import response_values

FUNCTION = "instructjax.tasks.rewards:constraint_fraction"


def ppo_config(**overrides):
    return load_experiment_config("ppo", "tiny", {"ptx.gamma": 0.0, "samples.every_steps": 0, "export": False,
                                                  **overrides})


NO_REWARD_MODEL = r"value.init='reward' needs a reward model, and reward.source='{}' reads none: set value.init to " \
                  r"'policy' .* or 'shared'"


@pytest.mark.parametrize("fields, message", [
    ({"num_epochs": 2.0}, r"ppo: num_epochs=2.0 is not read: PPO runs num_steps iterations .* use num_steps"),
    ({"num_steps": 0}, r"ppo: num_steps=0: set the number of PPO iterations"),
    ({"data.validation_fraction": 0.1}, r"ppo: data.validation_files=\(\) / data.validation_fraction=0.1: PPO reads "
                                        r"training records only"),
    ({"ptx.data.validation_files": ("held_out.jsonl",)}, r"ppo: ptx.data.validation_files=\('held_out.jsonl',\)"),
    ({"model.dropout_rate": 0.1}, r"ppo: model.dropout_rate / attention_dropout"),
    ({"eval.every_steps": 2}, r"ppo: eval.every_steps=2 needs an evaluate function"),
    ({"value.init": "reward", "reward.source": "token_count"}, NO_REWARD_MODEL.format("token_count")),
    ({"value.init": "reward", "reward.source": "function", "reward.function": FUNCTION},
     NO_REWARD_MODEL.format("function")),
    ({"value.init": "critic"}, r"value.init='critic': expected one of"),
    ({"advantage": "ppo"}, r"advantage='ppo': expected one of"),
])
def test_a_setting_ppo_would_not_honour_is_refused_before_anything_is_written(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        train_ppo(ppo_config(**fields), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_group_baselines_read_no_value_settings():
    config = ppo_config(**{"advantage": "rloo", "rollout.group_size": 2, "value.init": "reward"})
    assert check_config(config).in_graph == "token_count"


def test_the_pipeline_refuses_value_init_reward_without_a_reward_model_before_anything_is_written(tmp_path):
    config = load_experiment_config("pipeline", "tiny", {"ppo.reward.source": "function",
                                                         "ppo.reward.function": FUNCTION})
    with pytest.raises(ValueError, match=NO_REWARD_MODEL.format("function")):
        stages.stage_configs(config.copy_and_resolve_references(), tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_nan_at_step_stops_ppo_there_naming_no_sane_checkpoint(tmp_path):
    """The injected NaN reaches the loss and both gradient norms; the guard names all three. Checkpoint 2
    is the state step 3 was trained from: not known sane, and there is none before it."""
    config = ppo_config(**{"debug.nan_at_step": 3, "num_steps": 4, "checkpoint.every_steps": 2})
    with pytest.raises(NonFiniteLossError, match=r"ppo: step 3: \{'loss': nan, 'policy_grad_norm': nan, "
                                                 r"'value_grad_norm': nan\} is not finite.*Checkpoint 2 holds the "
                                                 r"state step 3 was trained from.*No checkpoint is known sane"):
        train_ppo(config, tmp_path / "run")
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("key", ["policy_grad_norm", "value_grad_norm"])
def test_a_non_finite_gradient_norm_stops_the_loop(tmp_path, key):
    """PPO's gradient norms are guarded like SFT's `grad_norm`, with a finite loss."""
    def step_fn(state, batch, rng):
        return state + 1, {"loss": jnp.float32(0.5), key: jnp.float32(jnp.inf if batch == 2 else 1.0)}

    with pytest.raises(NonFiniteLossError, match=rf"step 2: \{{'{key}': inf\}} is not finite"):
        loop.run(loop.LoopConfig(num_steps=3), Workdir.at(tmp_path / "run"), step_fn=step_fn,
                 init_state=lambda: jnp.zeros((), jnp.int32), abstract_state=None, train_iterator=iter([1, 2, 3]),
                 rng=jax.random.key(0))


@pytest.mark.parametrize("value_init", ["reward", "policy"])
@pytest.mark.parametrize("model", [{"remat_policy": "dots", "scan_layers": True, "param_dtype": "bfloat16"},
                                   {"remat_policy": "full", "frozen_layers": 1}])
def test_a_separate_value_network_gets_the_policys_model_settings(value_init, model):
    """From an unstacked f32 reward model without remat: the value network has the policy's remat,
    scan, frozen layers and dtypes, and (from the reward model) scores as the reward model does."""
    config = ppo_config(**{"value.init": value_init, **{f"model.{k}": v for k, v in model.items()}})
    base = ij.models.get_preset("tiny")
    reward_params = reward_params_from_lm(base, init_params(base, jax.random.key(1)), jax.random.key(2))
    cfg, policy_params = with_overrides(base, init_params(base, jax.random.key(3)), config.model)
    value_cfg, value_params, _ = init_value(config, cfg, policy_params, base, reward_params)
    assert value_cfg == cfg == base.replace(**config.model)
    assert ("layers" in value_params) == model.get("scan_layers", False)
    assert {x.dtype for x in jax.tree.leaves(value_params)} == {jnp.dtype(config.model.param_dtype)}
    if value_init == "reward":
        tokens = jax.random.randint(jax.random.key(5), (2, 12), 3, tiny_tokenizer().vocab_size)
        attention, response = jnp.ones((2, 12), bool), jnp.ones((2, 4), bool)
        np.testing.assert_allclose(response_values(value_cfg, value_params, tokens, attention, response),
                                   response_values(base, reward_params, tokens, attention, response),
                                   atol=2e-2 if config.model.param_dtype == "bfloat16" else 1e-5)


@pytest.fixture(scope="module")
def reward_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "export"
    cfg = ij.models.get_preset("tiny")
    params = reward_params_from_lm(cfg, init_params(cfg, jax.random.key(5)), jax.random.key(6))
    export_reward_model(path, cfg, params, tiny_tokenizer())
    return path


def test_a_value_network_from_the_reward_model_trains_with_scanned_rematerialised_blocks(tmp_path, reward_export):
    """The instructgpt preset's layout (value.init='reward', model.scan_layers) end to end, with remat."""
    config = ppo_config(**{"value.init": "reward", "reward.source": "model", "reward.path": str(reward_export),
                           "model.scan_layers": True, "model.remat_policy": "full", "num_steps": 2,
                           "checkpoint.every_steps": 2})
    state = train_ppo(config, tmp_path / "run")
    assert "layers" in state.value.params and "layers" in state.policy.params
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(np.isfinite(r["train/value_loss"]) and np.isfinite(r["train/value_grad_norm"]) for r in records)
