"""The tiny SFT preset end to end: the loss falls, the export loads in transformers, an exact resume
after SIGKILL, the NaN guard, and the workdir's config check."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

import instructjax as ij
from instructjax.train import Checkpointer, NonFiniteLossError, read_metrics, train_sft
from instructjax.testing.experiments import (assert_same_export, assert_same_run, config_leaf_paths,
                                              documented_config_paths, kill_after_checkpoint, kill_at_random_points,
                                              load_experiment_config, run_experiment)

# A short version of the tiny preset: checkpoints at 6, 12, 18, 24 (the last 3 kept); evaluation at 16 and 24.
OVERRIDES = {"num_steps": 24, "checkpoint.every_steps": 6, "eval.every_steps": 16, "eval.max_new_tokens": 8}


def sft_config(preset="tiny", **overrides):
    return load_experiment_config("sft", preset, {**OVERRIDES, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of the tiny preset (in this process: 8 fake devices, data=8)."""
    workdir = tmp_path_factory.mktemp("sft") / "run"
    state = train_sft(sft_config(), workdir)
    return workdir, state


def test_tiny_preset_learns_and_exports(tiny_run):
    workdir, state = tiny_run
    assert int(state.step) == 24
    records = read_metrics(workdir / "metrics.jsonl")
    train = [r["train/loss"] for r in records if "train/loss" in r]
    evals = [r["eval/loss"] for r in records if "eval/loss" in r]
    assert len(train) == 24 and len(evals) == 2
    assert np.mean(train[-4:]) < np.mean(train[:4]) - 1.0, train
    assert evals[1] < evals[0]
    assert "perf/tokens_per_s" in records[-2] and records[-2]["data/records"] == 24 * 8
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == ["step_000016.txt", "step_000024.txt"]
    assert "--- response ---" in (workdir / "samples" / "step_000024.txt").read_text()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["12", "18", "24"]
    assert list((workdir / "tensorboard").iterdir())

    cfg, params = ij.checkpoints.load_hf(workdir / "export")
    np.testing.assert_array_equal(params["lm_head"], np.asarray(state.params["lm_head"]))
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(workdir / "export", torch_dtype=torch.float32)
    hf_tok = transformers.AutoTokenizer.from_pretrained(workdir / "export")
    tok = ij.testing.tiny_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 2?"}])
    ids = tok.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    ours = ij.models.Transformer(cfg).apply({"params": params}, np.asarray([ids], np.int32))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_init_from_an_earlier_workdir(tiny_run):
    workdir, state = tiny_run
    config = sft_config(**{"init.source": "workdir", "init.path": str(workdir)})
    cfg, params, tok = ij.train.load_initial_model(config.init, config.model, jax.random.key(0))
    assert cfg.vocab_size == 320 and tok.eos_id == 2
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(state.params))


def run_script(workdir, log, *extra, wait=True):
    """experiments/sft.py on the shortened tiny preset."""
    return run_experiment("sft", workdir, log, *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *extra,
                          wait=wait, timeout_s=300)


def test_resume_after_sigkill_equals_the_uninterrupted_run(tiny_run, tmp_path):
    reference, _ = tiny_run
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.1"  # time to kill the run between checkpoints 6 and 12
    process = run_script(workdir, tmp_path / "killed.log", slow, wait=False)
    kill_after_checkpoint(process, workdir / "checkpoints" / "6", timeout_s=240)
    assert not (workdir / "export").exists()
    assert not (workdir / "checkpoints" / "24").exists()

    run_script(workdir, tmp_path / "resumed.log", slow)
    assert_same_run(workdir, reference)
    assert "data: dropped 0 of 192 records read; 0 prompts truncated" in (tmp_path / "resumed.log").read_text()
    assert (workdir / "samples" / "step_000024.txt").read_text() == \
        (reference / "samples" / "step_000024.txt").read_text()


def test_killed_at_5_random_points_ends_as_the_uninterrupted_run(tiny_run, tmp_path):
    reference, _ = tiny_run
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.1"

    def start(i):
        return run_script(workdir, tmp_path / f"killed_{i}.log", slow, wait=False)

    points = kill_at_random_points(start, workdir / "metrics.jsonl", OVERRIDES["num_steps"], seed=1, kills=5)
    print("killed after (step, seconds):", points)
    run_script(workdir, tmp_path / "final.log", slow)
    assert_same_run(workdir, reference)
    assert_same_export(workdir, reference)


@pytest.mark.needs_devices(8)
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = sft_config(**{"debug.nan_at_step": 11, "checkpoint.every_steps": 4, "eval.every_steps": 0,
                           "parallel.mesh_shape": (2, 2, 2)})  # checkpoints of data, fsdp and tensor shards
    with pytest.raises(NonFiniteLossError, match=r"step 11: .*loss.*not finite.*diverges again.*last sane "
                                                 r"checkpoint .* is step 8"):
        train_sft(config, tmp_path)
    assert not (tmp_path / "export").exists()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    with Checkpointer(tmp_path / "checkpoints", keep=3) as checkpointer:
        assert checkpointer.all_steps() == [4, 8]
        raw = checkpointer.restore(8)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(raw["params"]))
    assert int(raw["step"]) == 8


def test_rerunning_a_finished_run_changes_nothing(tiny_run, tmp_path):
    """The same command again in a finished workdir: it restores the last checkpoint, trains no step, logs no
    metrics twice and writes the same export bytes."""
    reference, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    state = train_sft(sft_config(), workdir)
    assert int(state.step) == 24
    assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert_same_export(workdir, reference)


def test_skip_nonfinite_skips_the_poisoned_update_and_goes_on(tmp_path, caplog):
    """optim.skip_nonfinite=1: the NaN step's update is skipped (params and Adam moments kept, the batch
    consumed), counted in the metrics and on the console, and the run ends with finite params."""
    config = sft_config(**{"debug.nan_at_step": 11, "optim.skip_nonfinite": 1, "eval.every_steps": 0})
    with caplog.at_level(logging.WARNING):
        state = train_sft(config, tmp_path)
    assert int(state.step) == 24
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["train/skipped_updates"] for r in records] == [0] * 10 + [1] * 14
    assert records[10]["train/loss"] == "nan" and np.isfinite(records[11]["train/loss"])  # NaN logged as a string
    assert "step 11: {'loss': nan" in caplog.text and "1 update(s) skipped" in caplog.text
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before_and_ends_as_the_uninterrupted_run(
        tiny_run, tmp_path, caplog):
    """64 flipped bytes in the last checkpoint's array data: set aside with a warning naming the file, the run
    goes on from checkpoint 18 and exports the same bytes (not the corrupt state Orbax would restore)."""
    reference, _ = tiny_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    shutil.rmtree(workdir / "export")
    blob = max((p for p in (workdir / "checkpoints" / "24" / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[4096:4160] = bytes(b ^ 0xFF for b in data[4096:4160])
    blob.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        state = train_sft(sft_config(), workdir)
    assert f"{blob.relative_to(workdir / 'checkpoints' / '24')} does not match its checksum" in caplog.text
    assert f"resumed from {workdir / 'checkpoints'}/18" in caplog.text
    assert int(state.step) == 24 and (workdir / "checkpoints" / "rejected" / "24").is_dir()
    assert_same_run(workdir, reference)
    assert (workdir / "export" / "model.safetensors").read_bytes() == \
        (reference / "export" / "model.safetensors").read_bytes()


def test_after_a_nan_the_last_sane_checkpoint_carries_on_in_a_fresh_workdir(tiny_run, tmp_path):
    """NaN at step 13: checkpoint 12 is the state step 13 came from, 6 the last sane one; copied into a fresh
    workdir as the message says, a run without the NaN goes on from it to the uninterrupted run's model."""
    reference, _ = tiny_run
    with pytest.raises(NonFiniteLossError, match=r"Checkpoint 12 holds the state step 13 was trained from.*"
                                                 r"last sane checkpoint .* is step 6"):
        train_sft(sft_config(**{"debug.nan_at_step": 13}), tmp_path / "nan")
    (tmp_path / "new" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "nan" / "checkpoints" / "6", tmp_path / "new" / "checkpoints" / "6")
    state = train_sft(sft_config(), tmp_path / "new")
    assert int(state.step) == 24
    assert (tmp_path / "new" / "export" / "model.safetensors").read_bytes() == \
        (reference / "export" / "model.safetensors").read_bytes()


def test_a_different_config_in_the_same_workdir_is_refused(tmp_path):
    ij.train.Workdir.at(tmp_path).write_config(sft_config())
    ij.train.Workdir.at(tmp_path).write_config(sft_config())  # same config: fine (resume)
    with pytest.raises(ValueError, match=r"optim.lr: 0.003 -> 0.1.*fresh --workdir"):
        ij.train.Workdir.at(tmp_path).write_config(sft_config(**{"optim.lr": 0.1}))
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.003


def test_presets_declare_every_field_with_a_comment():
    documented = documented_config_paths("sft")  # full key paths: "data.name", not any "*.name"
    for preset in ("tiny", "smollm2"):
        undocumented = [p for p in config_leaf_paths(sft_config(preset)) if p not in documented]
        assert not undocumented, (preset, undocumented)
    with pytest.raises(ValueError, match="unknown SFT preset"):
        sft_config("huge")
