"""The tiny PPO preset end to end on the shared loop (PPO-ptx on): item-25 metrics, sample tables,
export, and an exact resume after SIGKILL; a value head on the policy trunk with bf16 frozen models."""

import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import instructjax as ij
from instructjax import rl
from instructjax.train import read_metrics
from instructjax.train.ppo import train_ppo
from instructjax.testing.experiments import (assert_same_run, config_leaf_paths, documented_config_paths,
                                              kill_after_checkpoint, load_experiment_config, without_timings)

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO / "experiments" / "configs" / "ppo.py"
OVERRIDES = {"num_steps": 6, "checkpoint.every_steps": 2, "ptx.gamma": 0.5, "samples.every_steps": 3}


def ppo_config(preset="tiny", **overrides):
    return load_experiment_config("ppo", preset, {**OVERRIDES, **overrides})

LOGGED = ("score", "kl", "kl_coef", "entropy", "approx_kl", "clip_frac", "value_loss", "explained_variance",
          "response_length", "eos_fraction", "ptx_loss", "loss")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ppo") / "run"
    state = train_ppo(ppo_config(), workdir)
    return workdir, state


def test_tiny_preset_logs_samples_and_exports(tiny_run):
    workdir, state = tiny_run
    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    for key in LOGGED:
        assert all(np.isfinite(r[f"train/{key}"]) for r in records), key
    assert int(state.step) == 6 and int(state.policy.step) == 6 * 2 * 2
    rows = [json.loads(line) for line in (workdir / "samples" / "ppo_step_000003.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"prompt", "response", "score", "kl", "kl_coef"} <= set(rows[0])
    _, params = ij.checkpoints.load_hf(workdir / "export")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), params, jax.device_get(state.policy.params))


def run_script(workdir, log, *extra, wait=True):
    cmd = [sys.executable, str(REPO / "experiments" / "ppo.py"), f"--config={CONFIG_FILE}:tiny",
           f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *extra]
    # one CPU device: with 8 fake devices on 2 shared cores a resumed run once starved an XLA:CPU
    # collective past its 40 s rendezvous timeout (see docs/ppo.md)
    env = os.environ | {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
                        "JAX_COMPILATION_CACHE_DIR": str(log.parent / "jax_cache"),
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    with open(log, "w") as stderr:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=stderr, stderr=stderr, env=env)
    if wait:
        assert process.wait(timeout=400) == 0, log.read_text()[-3000:]
    return process


def test_resume_after_sigkill_equals_the_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    run_script(reference, tmp_path / "reference.log")
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=1.0"  # time to kill the run between checkpoints 2 and 4
    process = run_script(workdir, tmp_path / "killed.log", slow, wait=False)
    kill_after_checkpoint(process, workdir / "checkpoints" / "2", timeout_s=300)
    assert not (workdir / "export").exists()
    assert not (workdir / "checkpoints" / "6").exists()
    run_script(workdir, tmp_path / "resumed.log", slow)
    assert_same_run(workdir, reference)


def test_shared_value_head_with_bf16_frozen_models_exports_the_lm_and_resumes(tmp_path, caplog):
    """value.init="shared", reference and reward model in bf16: no value network in the state, the
    export is the policy LM alone, and a run resumed from checkpoint 2 ends as the uninterrupted one."""
    config = ppo_config(**{"value.init": "shared", "ppo.vf_coef": 0.1, "reward.source": "random",
                           "reference.dtype": "bfloat16", "reward.dtype": "bfloat16", "num_steps": 4,
                           "samples.every_steps": 0})
    workdir = tmp_path / "run"
    state = train_ppo(config, workdir)
    assert state.value is None and rl.VALUE_HEAD in state.policy.params
    records = read_metrics(workdir / "metrics.jsonl")
    assert all(np.isfinite(r["train/value_loss"]) and np.isfinite(r["train/score"]) for r in records)
    _, exported = ij.checkpoints.load_hf(workdir / "export")
    final = jax.device_get(state.policy.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), exported, rl.lm_params(final))

    shutil.rmtree(workdir / "checkpoints" / "4")  # as if killed between checkpoints 2 and 4
    shutil.rmtree(workdir / "export")
    with caplog.at_level(logging.INFO):
        resumed = train_ppo(config, workdir)
    assert f"resumed from {workdir / 'checkpoints'}/2" in caplog.text
    assert without_timings(read_metrics(workdir / "metrics.jsonl")) == without_timings(records)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.policy.params), final)


def test_presets_declare_every_field_with_a_comment():
    documented = documented_config_paths("ppo")  # full key paths: "ptx.data.name", not any "*.name"
    for preset in ("tiny", "smollm2", "instructgpt"):
        undocumented = [p for p in config_leaf_paths(ppo_config(preset)) if p not in documented]
        assert not undocumented, (preset, undocumented)
    with pytest.raises(ValueError, match="unknown ppo preset"):
        ppo_config("huge")
