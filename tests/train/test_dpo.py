"""DPO / IPO: the pair sums against an explicit list of pairs, the tiny preset end to end (it learns
the preferences of its training pairs, checked by an independent forward of the export and the
initial model), reference logprobs computed once and cached, an exact resume (also after SIGKILL),
sharded over 8 fake devices equal to one device, the script with IPO."""

import itertools
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import instructjax as ij
from instructjax import datasets, losses
from instructjax.data import render
from instructjax.train import dpo, read_metrics, train_dpo
from instructjax.train.config import dataset_config
from instructjax.testing.experiments import (assert_same_export, assert_same_run, config_leaf_paths,
                                              documented_config_paths, kill_after_checkpoint, kill_at_random_points,
                                              load_experiment_config, run_experiment, without_timings)


def dpo_config(preset="tiny", **overrides):
    return load_experiment_config("dpo", preset, overrides)


# -- the objective --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_pair_sums_equal_dpo_loss_over_every_ordered_pair(kind):
    rng = np.random.default_rng(0)
    logp, ref = rng.normal(size=(2, 5, 4)) * 2
    ranks = np.array([[0, 1, 2, 3], [1, 0, 1, 0], [0, 0, 0, 1], [2, 1, 0, 0], [0, 1, 0, 0]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
    pairs = [(b, w, l) for b in range(5) for w, l in itertools.permutations(range(4), 2)
             if valid[b, w] and valid[b, l] and ranks[b, w] < ranks[b, l]]
    assert len(pairs) == 6 + 2 + 3 + 5 + 1  # ties and padded slots give no pair
    b, w, l = map(np.array, zip(*pairs))
    beta = 0.2
    loss_sum, aux = dpo.pair_sums(jnp.array(logp), jnp.array(ref), jnp.array(ranks), jnp.array(valid), beta, kind)
    assert int(aux["weight"]) == len(pairs)
    want = losses.dpo_loss(logp[b, w], logp[b, l], ref[b, w], ref[b, l], beta, kind)
    np.testing.assert_allclose(loss_sum / aux["weight"], want, rtol=1e-5)
    metrics = dpo.derived_metrics(aux["totals"])
    chosen, rejected = beta * (logp[b, w] - ref[b, w]), beta * (logp[b, l] - ref[b, l])
    np.testing.assert_allclose(metrics["accuracy"], np.mean(chosen > rejected), rtol=1e-6)
    np.testing.assert_allclose(metrics["chosen_reward"], chosen.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rejected_reward"], rejected.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["margin"], chosen.mean() - rejected.mean(), rtol=1e-5)


def test_bad_configs_are_refused(tmp_path):
    for overrides, match in (({"loss": "kto"}, "config.loss='kto'"), ({"beta": 0.0}, "config.beta"),
                             ({"model.dropout_rate": 0.1}, "without dropout")):
        with pytest.raises(ValueError, match=match):
            train_dpo(dpo_config(**overrides), tmp_path)


def test_presets_declare_every_field_with_a_comment():
    documented = documented_config_paths("dpo")
    for preset in ("tiny", "smollm2"):
        undocumented = [p for p in config_leaf_paths(dpo_config(preset)) if p not in documented]
        assert not undocumented, (preset, undocumented)
    with pytest.raises(ValueError, match="unknown DPO preset"):
        dpo_config("huge")


# -- the tiny preset ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of the tiny preset (in this process: 8 fake devices, data=8): 30 steps,
    checkpoints and evaluations at 10, 20, 30."""
    workdir = tmp_path_factory.mktemp("dpo") / "run"
    config = dpo_config()
    state = train_dpo(config, workdir)
    return workdir, state, config


def summed_logprobs(cfg, params, rows, width=128):
    """float64 [N]: sum of log p(completion + EOS | prompt) of each (prompt ids, completion ids), written
    out here apart from the trainer: one padded forward, log_softmax in numpy, token i read at i - 1."""
    tokens, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), bool)
    for i, (prompt, completion) in enumerate(rows):
        tokens[i, :len(prompt) + len(completion)], mask[i, :len(prompt) + len(completion)] = prompt + completion, True
    logits = np.asarray(ij.models.Transformer(cfg).apply({"params": params}, tokens, attention_mask=mask),
                        np.float64)
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    return np.array([sum(logp[i, t - 1, tokens[i, t]] for t in range(len(p), len(p) + len(c)))
                     for i, (p, c) in enumerate(rows)])


def training_records(workdir, config, tokenizer):
    """(position in the train split, rows, ranking) of each training record the loader keeps (at most
    K completions, prompt + completion + EOS within max_len): rows (prompt ids, completion ids)."""
    built = datasets.build(dataset_config(config.data, "comparisons"), workdir / "data")
    kept = []
    for i, stored in enumerate(built.source("train")):
        record = datasets.decode("comparisons", stored)
        prompt = render.prompt_ids(tokenizer, record["prompt"], True)
        rows = [(prompt, render.completion_ids(tokenizer, c)) for c in record["completions"]]
        if len(rows) <= config.data.max_completions and max(len(p) + len(c) for p, c in rows) <= config.data.max_len:
            kept.append((i, rows, record["ranking"]))
    return kept


def test_the_reference_cache_is_keyed_by_the_initial_model_and_the_rows():
    config = load_experiment_config("dpo", "tiny")
    model = {"/m/model.safetensors": {"key": "init.path", "sha256": "a" * 64, "size": 1}}
    data = {"/d/train.jsonl": {"key": "data.train_files", "sha256": "b" * 64, "size": 1}}
    key = dpo.reference_key(config, {**model, **data})
    assert key == dpo.reference_key(config, {**model, "/d/train.jsonl": {**data["/d/train.jsonl"], "sha256": "c" * 64}})
    changed_model = {"/m/model.safetensors": {**model["/m/model.safetensors"], "sha256": "d" * 64}}
    assert key != dpo.reference_key(config, {**changed_model, **data})  # the same path, other weights
    assert key != dpo.reference_key(load_experiment_config("dpo", "tiny", {"data.max_len": 64}), {**model, **data})


def test_tiny_preset_learns_the_training_preferences(tiny_run):
    workdir, state, config = tiny_run
    assert int(state.step) == 30
    records = read_metrics(workdir / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert len(train) == 30 and [r["step"] for r in evals] == [10, 20, 30]
    # the policy starts as the reference: h = 0 on every pair, loss log 2 (the cache is aligned with the batches)
    assert abs(train[0]["train/loss"] - math.log(2)) < 1e-4 and abs(train[0]["train/margin"]) < 1e-4
    assert {"train/accuracy", "train/chosen_reward", "train/rejected_reward", "train/pairs", "eval/margin"} <= \
        set(train[0]) | set(evals[0])
    first, last = train[:5], train[-5:]
    assert np.mean([r["train/loss"] for r in last]) < np.mean([r["train/loss"] for r in first]) - 0.2
    assert np.mean([r["train/accuracy"] for r in last]) > 0.9
    assert np.mean([r["train/margin"] for r in last]) > 0.5

    # Independently of the trainer's pair code: the export against the initial model on every training
    # pair as the data rank it. Training on swapped pairs makes this fail (tried once on purpose).
    cfg, params, tokenizer = ij.train.load_initial_model(config.init, config.model,
                                                         jax.random.split(jax.random.key(config.seed))[0])
    _, trained = ij.checkpoints.load_hf(workdir / "export")
    kept = training_records(workdir, config, tokenizer)
    rows = [row for _, record_rows, _ in kept for row in record_rows]
    starts = np.cumsum([0] + [len(r) for _, r, _ in kept])
    pairs = np.array([(start + w, start + l) for start, (_, _, ranking) in zip(starts, kept)
                      for w, l in itertools.permutations(range(len(ranking)), 2) if ranking[w] < ranking[l]])
    reference = summed_logprobs(cfg, params, rows)
    reward = config.beta * (summed_logprobs(cfg, trained, rows) - reference)
    accuracy = np.mean(reward[pairs[:, 0]] > reward[pairs[:, 1]])
    print(f"{len(kept)} training records, {len(pairs)} pairs: reward accuracy of the export {accuracy:.3f}")
    assert accuracy > 0.85

    # the cached table holds the initial model's logprobs of the same completions; NaN for dropped records
    built = datasets.build(dataset_config(config.data, "comparisons"), workdir / "data")
    inputs = json.loads((workdir / "inputs.json").read_text())["files"]
    table = np.load(dpo.reference_file(ij.train.Workdir.at(workdir), built, "train", dpo.reference_key(config, inputs)))
    assert table.shape == (24, config.data.max_completions)
    np.testing.assert_array_equal(np.isnan(table).all(axis=1), [i not in {k[0] for k in kept} for i in range(24)])
    cached = np.concatenate([table[i, :len(record_rows)] for i, record_rows, _ in kept])
    np.testing.assert_allclose(cached, reference, atol=1e-3)


def test_reference_logprobs_are_computed_once_and_a_resume_equals_the_uninterrupted_run(tiny_run, tmp_path,
                                                                                        monkeypatch):
    reference, _, config = tiny_run
    assert sorted(p.name.split("-")[0] for p in (reference / "reference").iterdir()) == ["train", "validation"]
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "checkpoints" / "30")
    shutil.rmtree(workdir / "export")
    before = {p.name: p.stat().st_mtime_ns for p in (workdir / "reference").iterdir()}

    def recompute(*args, **kwargs):
        raise AssertionError("reference logprobs recomputed")

    monkeypatch.setattr(dpo, "reference_logprobs", recompute)
    state = train_dpo(config, workdir)  # resumes from checkpoint 20
    assert int(state.step) == 30
    assert {p.name: p.stat().st_mtime_ns for p in (workdir / "reference").iterdir()} == before
    assert_same_run(workdir, reference)


def test_resume_after_sigkill_equals_the_uninterrupted_run(tiny_run, tmp_path):
    reference, *_ = tiny_run
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.2"  # time to kill the run between checkpoints 10 and 20
    process = run_experiment("dpo", workdir, tmp_path / "killed.log", slow, wait=False)
    kill_after_checkpoint(process, workdir / "checkpoints" / "10", timeout_s=240)
    assert not (workdir / "export").exists()
    assert not (workdir / "checkpoints" / "30").exists()
    run_experiment("dpo", workdir, tmp_path / "resumed.log", slow, timeout_s=300)
    assert_same_run(workdir, reference)


def test_killed_at_5_random_points_ends_as_the_uninterrupted_run(tiny_run, tmp_path):
    reference, _, config = tiny_run
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.1"

    def start(i):
        return run_experiment("dpo", workdir, tmp_path / f"killed_{i}.log", slow, wait=False)

    points = kill_at_random_points(start, workdir / "metrics.jsonl", config.num_steps, seed=3, kills=5)
    print("killed after (step, seconds):", points)
    run_experiment("dpo", workdir, tmp_path / "final.log", slow, timeout_s=300)
    assert_same_run(workdir, reference)
    assert_same_export(workdir, reference)


@pytest.mark.needs_devices(8)
def test_sharded_run_equals_a_single_device_run(tmp_path):
    """10 steps with data, fsdp and tensor sharded over 8 fake devices (this process) and on one device (the
    script): the same metrics and export up to float rounding."""
    short = {"num_steps": 10, "checkpoint.every_steps": 10, "eval.every_steps": 10}
    train_dpo(dpo_config(**short, **{"parallel.mesh_shape": (2, 2, 2)}), tmp_path / "sharded")
    run_experiment("dpo", tmp_path / "single", tmp_path / "single.log",
                   *(f"--config.{k}={v}" for k, v in short.items()), devices=1, timeout_s=300)
    sharded, single = (without_timings(read_metrics(tmp_path / run / "metrics.jsonl")) for run in ("sharded", "single"))
    assert [sorted(r) for r in sharded] == [sorted(r) for r in single] and len(sharded) == 10 + 1  # + eval
    for got, want in zip(sharded, single):
        # pairs counted as correct (margin > 0) while the policy is still the reference: margins of rounding size
        counts = ("train/accuracy", "train/correct_pairs") if abs(want.get("train/margin", 1.0)) < 1e-3 else ()
        for key in set(got) - set(counts):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-3, atol=1e-5, err_msg=f"{key} at {got['step']}")
    _, got = ij.checkpoints.load_hf(tmp_path / "sharded" / "export")
    _, want = ij.checkpoints.load_hf(tmp_path / "single" / "export")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), got, want)


def test_script_runs_ipo(tmp_path):
    overrides = {"loss": "ipo", "num_steps": 4, "checkpoint.every_steps": 4, "eval.every_steps": 0}
    run_experiment("dpo", tmp_path / "run", tmp_path / "ipo.log", *(f"--config.{k}={v}" for k, v in overrides.items()),
                   timeout_s=300)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loss"] == "ipo"
    train = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(train) == 4
    np.testing.assert_allclose(train[0]["train/loss"], (1 / (2 * 0.1)) ** 2, rtol=1e-4)  # h = 0: (0 - 5)^2
    assert (tmp_path / "run" / "export" / "config.json").exists()
