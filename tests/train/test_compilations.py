"""An RL iteration after the first compiles nothing: the trainer builds each jitted function once and
every later iteration reuses it (no retracing from a changed shape, dtype, static argument or a new
closure). XLA compilations are counted with jax.monitoring's backend-compile event, per iteration
(from one `evaluate` call to the next). The first checkpoint write compiles Orbax's shard slicing once
(72 small programs for the tiny state on 8 devices), so the first save comes after the iterations
checked: checkpoint.every_steps=3 saves after iteration 3's evaluation."""

import jax
import pytest

from instructjax.testing.experiments import load_experiment_config
from instructjax.train.ppo import train_ppo

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT


@pytest.mark.parametrize("stage, overrides", [
    ("ppo", {"ptx.gamma": 0.5}),  # GAE with a value head, PPO-ptx, adaptive KL
    ("grpo", {}),                 # group baseline, KL as a loss term
])
def test_iterations_after_the_first_compile_nothing(tmp_path, stage, overrides):
    compilations = []

    def count(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            compilations.append(duration)

    compiled_by_iteration = {}

    def evaluate(cfg, params, iteration):  # runs after every iteration (eval.every_steps=1)
        compiled_by_iteration[iteration] = len(compilations)
        return {}

    config = load_experiment_config(stage, "tiny", {"num_steps": 4, "eval.every_steps": 1,
                                                    "samples.every_steps": 2, "checkpoint.every_steps": 3,
                                                    **overrides})
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        train_ppo(config, tmp_path / "run", evaluate=evaluate)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert sorted(compiled_by_iteration) == [1, 2, 3, 4]
    assert compiled_by_iteration[1] > 0  # the counter sees the first iteration's compilations
    # iterations 2 (with a sample table) and 3 compile nothing; 4 follows the first checkpoint write
    assert compiled_by_iteration[1] == compiled_by_iteration[2] == compiled_by_iteration[3], compiled_by_iteration
