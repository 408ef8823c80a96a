"""Nothing lost, nothing silently changed (issue #17): a workdir records its input files' sha256
(inputs.json) and a resume on changed inputs stops unless accepted (and then recorded); a workdir
without a checkpoint is not locked; a bad config value stops before anything is written, naming the key."""

import json
import logging
import shutil
import time

import pytest

from instructjax.datasets.build import EXAMPLES_DIR
from instructjax.testing.experiments import load_experiment_config
from instructjax.train import Workdir, train_ppo, train_sft
from instructjax.train.fingerprint import fingerprint

# Two steps, one checkpoint at step 2, no evaluation or export: seconds on the CPU.
SHORT = {"num_steps": 2, "checkpoint.every_steps": 2, "eval.every_steps": 0, "export": False}


def sft_config(**overrides):
    return load_experiment_config("sft", "tiny", {**SHORT, **overrides})


@pytest.fixture
def demos(tmp_path):
    """A copy of the shipped demonstrations, to edit."""
    path = tmp_path / "demos.jsonl"
    shutil.copy(f"{EXAMPLES_DIR}/demonstrations.jsonl", path)
    return path


def edit(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[1:] + lines[:1]))  # same records, another order: another sha256


@pytest.mark.parametrize("overrides, message", [
    ({"model.dtype": "bfloat17"}, r"--config.model.dtype='bfloat17': expected one of \('float32', 'bfloat16'"),
    ({"optim.schedule": "exp"}, r"--config.optim.schedule='exp': expected one of \('constant', 'linear', 'cosine'\)"),
    ({"parallel.mesh_shape": (3, 1, 1)}, r"--config.parallel.mesh_shape: .*does not cover the 8 devices"),
    ({"batch_size": 12}, r"config.batch_size=12 .*must split over the 8 data x fsdp devices"),
    ({"data.train_files": ("absent.jsonl",)}, r"--config.data.train_files: absent.jsonl is not a file"),
    ({"init.source": "hf", "init.path": "no/such/dir"}, r"--config.init.path: .*no/such/dir is neither"),
])
def test_a_bad_config_stops_in_seconds_naming_the_key_and_writes_nothing(tmp_path, overrides, message):
    start = time.perf_counter()
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_sft(sft_config(**overrides), tmp_path / "run")
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "run").exists()


def test_an_edited_data_file_stops_the_resume_until_accepted_and_recorded(tmp_path, demos, capsys):
    workdir, config = tmp_path / "run", sft_config(**{"data.train_files": (str(demos),)})
    train_sft(config, workdir)
    recorded = json.loads((workdir / "inputs.json").read_text())
    assert recorded["files"][str(demos)]["key"] == "data.train_files"
    assert recorded["files"][str(demos)]["size"] == demos.stat().st_size and recorded["history"] == []

    edit(demos)
    built = sorted(p.name for p in (workdir / "data").iterdir())
    with pytest.raises(ValueError, match=rf"{demos} \(data.train_files\) changed since {workdir}/inputs.json .*"
                                         r"fresh --workdir.*--config.accept_changed_inputs=True"):
        train_sft(config, workdir)
    assert json.loads((workdir / "inputs.json").read_text()) == recorded  # nothing written
    assert sorted(p.name for p in (workdir / "data").iterdir()) == built  # no dataset of the new file built

    accepted = config.copy_and_resolve_references()
    accepted.accept_changed_inputs = True  # not a different config: config.json is not compared on it
    train_sft(accepted, workdir)
    assert "resuming on 1 changed input file(s)" in capsys.readouterr().out
    now = json.loads((workdir / "inputs.json").read_text())
    assert now["files"] == fingerprint(config)
    [entry] = now["history"]
    assert entry["accepted"][str(demos)]["old"] == recorded["files"][str(demos)]
    assert entry["accepted"][str(demos)]["new"] == now["files"][str(demos)]
    train_sft(config, workdir)  # the accepted content is the recorded one: the same command resumes


def test_a_failed_run_without_a_checkpoint_does_not_lock_its_workdir(tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="step 1"):
        train_sft(sft_config(**{"debug.nan_at_step": 1}), workdir)
    assert (workdir / "config.json").exists() and not list((workdir / "checkpoints").glob("[0-9]*"))
    state = train_sft(sft_config(), workdir)  # the fixed config reruns in the same workdir
    assert int(state.step) == 2
    assert "no checkpoint yet: config.json rewritten (debug.nan_at_step changed)" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"debug.nan_at_step: -1 -> 1.*fresh --workdir"):
        train_sft(sft_config(**{"debug.nan_at_step": 1}), workdir)  # with a checkpoint it is locked


def test_changed_inputs_without_a_checkpoint_are_rewritten(tmp_path, demos, capsys):
    workdir, config = Workdir.at(tmp_path / "run"), sft_config(**{"data.train_files": (str(demos),)})
    workdir.write_config(config, fingerprint(config), locked=False)
    edit(demos)
    workdir.write_config(config, fingerprint(config), locked=False)
    assert "no checkpoint yet: inputs.json rewritten (1 changed file(s))" in capsys.readouterr().out
    assert json.loads(workdir.inputs_file.read_text()) == {"files": fingerprint(config), "history": []}


def test_ppo_prints_its_dropped_records(tmp_path, caplog):
    config = load_experiment_config("ppo", "tiny", {"num_steps": 1, "checkpoint.every_steps": 1, "export": False,
                                                    "samples.every_steps": 0})
    with caplog.at_level(logging.INFO):
        train_ppo(config, tmp_path / "run")
    assert "ppo: data: dropped 10 of 26 records read; 10 longer than" in caplog.text  # prompts over 64 tokens


def test_model_inputs_are_the_files_of_the_exports_read(tmp_path):
    """init.path (an earlier stage's workdir) and reward.path count by their exports' files, not checkpoints."""
    for stage in ("sft", "rm"):
        (tmp_path / stage / "export").mkdir(parents=True)
        (tmp_path / stage / "checkpoints").mkdir()
        for name in ("config.json", "model.safetensors"):
            (tmp_path / stage / "export" / name).write_text(f"{stage} {name}")
        (tmp_path / stage / "checkpoints" / "metrics").write_text("not read")
    config = load_experiment_config("ppo", "tiny", {"init.source": "workdir", "init.path": str(tmp_path / "sft"),
                                                    "reward.source": "model", "reward.path": str(tmp_path / "rm")})
    found = fingerprint(config)
    assert sorted((v["key"], p) for p, v in found.items()) == [
        (key, str(tmp_path / stage / "export" / name)) for key, stage in (("init.path", "sft"), ("reward.path", "rm"))
        for name in ("config.json", "model.safetensors")]
    (tmp_path / "rm" / "export" / "model.safetensors").write_text("rm retrained")
    assert [p for p in found if fingerprint(config)[p] != found[p]] == [str(tmp_path / "rm/export/model.safetensors")]
