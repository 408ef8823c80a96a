"""PPO's reward sources from `config.reward`: resolved and checked up front, weights one per source;
reward functions run on process 0 and are broadcast."""

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from instructjax.testing.experiments import load_experiment_config
from instructjax.train import ppo_rewards

FN = "instructjax.tasks.rewards:constraint_fraction"
ALL = "instructjax.tasks.rewards:all_constraints"


def reward(**fields):
    config = load_experiment_config("ppo", "tiny").reward
    for key, value in fields.items():
        setattr(config, key, value)
    return config


@pytest.mark.parametrize("fields, in_graph, names, weights", [
    ({}, "token_count", ("token_count",), (1.0,)),
    ({"source": "function", "function": FN}, None, ("constraint_fraction",), (1.0,)),
    ({"source": "function", "function": f"{FN},{ALL}", "weights": (2, 0.5)}, None,
     ("constraint_fraction", "all_constraints"), (2.0, 0.5)),
    ({"source": "model+function", "function": FN, "path": "rm", "weights": (0.5, 1.0)}, "model",
     ("model", "constraint_fraction"), (0.5, 1.0)),
    ({"source": "model", "path": "rm"}, "model", ("model",), (1.0,)),
])
def test_sources_in_order_with_one_weight_each(fields, in_graph, names, weights):
    sources = ppo_rewards.reward_sources(reward(**fields))
    assert (sources.in_graph, sources.names, sources.weights) == (in_graph, names, weights)


@pytest.mark.parametrize("fields, message", [
    ({"source": "rm"}, "reward.source='rm': expected one of"),
    ({"source": "function"}, "reward.source='function' needs reward.function"),
    ({"source": "model+function", "path": "rm"}, "needs reward.function"),
    ({"source": "model", "function": FN, "path": "rm"}, "reward.function=.* is set but reward.source='model' calls "
                                                         "no function: use 'function' or 'model\\+function'"),
    ({"source": "model+function", "function": FN}, "reward.source='model\\+function' needs reward.path"),
    ({"source": "function", "function": "nope.nothing:fn"}, "cannot import 'nope.nothing'"),
    ({"source": "function", "function": FN, "weights": (1.0, 2.0)},
     "reward.weights=\\(1.0, 2.0\\): expected 1 weights, one per reward source \\('constraint_fraction',\\)"),
    ({"source": "model+function", "function": FN, "path": "rm", "weights": (1.0,)},
     "expected 2 weights, one per reward source \\('model', 'constraint_fraction'\\)"),
    ({"source": "function", "function": FN, "weights": (True,)}, "True is not a finite number"),
    ({"source": "function", "function": FN, "weights": (float("nan"),)}, "nan is not a finite number"),
])
def test_bad_reward_configs_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        ppo_rewards.reward_sources(reward(**fields))


def test_an_unread_reward_path_is_reported(caplog):
    with caplog.at_level("WARNING"):
        ppo_rewards.reward_sources(reward(source="function", function=FN, path="runs/rm"))
    assert "reward.path='runs/rm' is not read" in caplog.text


def test_functions_run_on_process_zero_and_are_broadcast(monkeypatch):
    sent = []

    def broadcast(tree):
        sent.append(tree)
        return np.asarray(False), np.full((1, 2), 7.0, np.float32)

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert ppo_rewards.on_process_zero(lambda: pytest.fail("computed off process 0"), (1, 2)).tolist() == [[7.0, 7.0]]
    assert not sent[0][0] and sent[0][1].shape == (1, 2)  # a placeholder of the right shape

    monkeypatch.setattr(jax, "process_index", lambda: 0)
    assert ppo_rewards.on_process_zero(lambda: np.ones((1, 2), np.float32), (1, 2)).tolist() == [[7.0, 7.0]]
    assert sent[1][1].tolist() == [[1.0, 1.0]]

    def fails():
        raise ValueError("reward function m:f: score 0 is nan")

    with pytest.raises(ValueError, match="score 0 is nan"):  # process 0 raises its own error after telling the others
        ppo_rewards.on_process_zero(fails, (1, 2))
    assert sent[2][0]
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda tree: (np.asarray(True), tree[1]))
    with pytest.raises(RuntimeError, match="failed on process 0"):
        ppo_rewards.on_process_zero(lambda: pytest.fail("computed off process 0"), (1, 2))
