"""Checkpoints that are checked: a checksum manifest written with each checkpoint (atomically with it,
also with async writes) and verified on restore, naming the checkpoint and file; a restored state with
NaN/inf refused by leaf path; a bad newest checkpoint set aside for the one before it, with a warning;
the NaN guard's last sane checkpoint."""

import json
import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.train import Checkpointer
from instructjax.train.checkpoint_checks import MANIFEST, BadCheckpointError
from instructjax.train.loop import last_sane_checkpoint

STATE = {"params": {"w": jnp.arange(256.0).reshape(16, 16), "b": jnp.ones(16)}, "step": jnp.int32(0)}


def state_at(step, poison=None):
    state = jax.tree.map(lambda x: x + step, STATE)
    if poison:
        state["params"][poison] = state["params"][poison].at[3].set(jnp.nan)
    return state


def largest_blob(step_dir):
    """The biggest file of the state (the array data)."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_bytes(path, start=64, count=64):
    data = bytearray(path.read_bytes())
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("async_save", [True, False])
def test_each_checkpoint_has_a_manifest_of_its_finished_files(tmp_path, async_save):
    with Checkpointer(tmp_path, keep=2, async_save=async_save) as checkpointer:
        for step in (1, 2, 3):
            checkpointer.save(step, state_at(step))
        checkpointer.wait()
        assert checkpointer.all_steps() == [2, 3]
        for step in (2, 3):
            files = json.loads((tmp_path / str(step) / MANIFEST).read_text())["files"]
            on_disk = {str(p.relative_to(tmp_path / str(step))) for p in (tmp_path / str(step)).glob("*/**/*")
                       if p.is_file()}
            assert set(files) == on_disk and any(name.startswith("state/") for name in files)
            restored = checkpointer.restore(step)
            np.testing.assert_array_equal(restored["params"]["w"], state_at(step)["params"]["w"])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*/*.tmp"))


def test_a_flipped_byte_is_named_and_the_checkpoint_before_is_restored(tmp_path, caplog):
    with Checkpointer(tmp_path, keep=3) as checkpointer:
        for step in (1, 2):
            checkpointer.save(step, state_at(step))
        checkpointer.wait()
        blob = largest_blob(tmp_path / "2")
        flip_bytes(blob)
        name = blob.relative_to(tmp_path / "2")
        with pytest.raises(BadCheckpointError, match=rf"checkpoint {tmp_path / '2'}: {name} does not match its "
                                                     rf"checksum in {MANIFEST}"):
            checkpointer.restore(2)
        with caplog.at_level(logging.WARNING):
            step, state = checkpointer.restore_newest_good()
        assert step == 1 and checkpointer.all_steps() == [1]
        np.testing.assert_array_equal(state["params"]["w"], state_at(1)["params"]["w"])
        assert f"{name} does not match its checksum" in caplog.text
        assert f"moved to {tmp_path / 'rejected' / '2'}, falling back to the checkpoint before it" in caplog.text
        assert (tmp_path / "rejected" / "2" / MANIFEST).exists()  # kept for a look, out of Orbax's way
        checkpointer.save(2, state_at(2))  # the run goes on and writes step 2 again
        checkpointer.wait()
        assert checkpointer.all_steps() == [1, 2]


def test_a_missing_or_extra_file_is_named(tmp_path):
    with Checkpointer(tmp_path, keep=3) as checkpointer:
        checkpointer.save(1, state_at(1))
        checkpointer.save(2, state_at(2))
        checkpointer.wait()
        blob = largest_blob(tmp_path / "1")
        blob.unlink()
        with pytest.raises(BadCheckpointError, match=f"{blob.relative_to(tmp_path / '1')} is missing"):
            checkpointer.restore(1)
        (tmp_path / "2" / "state" / "stray").write_text("x")
        with pytest.raises(BadCheckpointError, match=f"state/stray is not in {MANIFEST}"):
            checkpointer.restore(2)


def test_a_non_finite_state_is_refused_by_leaf_path(tmp_path, caplog):
    with Checkpointer(tmp_path, keep=3) as checkpointer:
        checkpointer.save(1, state_at(1))
        checkpointer.save(2, state_at(2, poison="b"))  # checksums match: the state itself is bad
        checkpointer.wait()
        with pytest.raises(BadCheckpointError, match=r"checkpoint .*/2: non-finite values \(NaN or inf\) in "
                                                     r"\['params'\]\['b'\]$"):
            checkpointer.restore(2)
        with caplog.at_level(logging.WARNING):
            assert checkpointer.restore_newest_good()[0] == 1


def test_a_checkpoint_without_manifest_restores_with_a_warning(tmp_path, caplog):
    """Checkpoints written before manifests existed still resume, said to be unverified."""
    with Checkpointer(tmp_path, keep=3) as checkpointer:
        checkpointer.save(1, state_at(1))
        checkpointer.wait()
        (tmp_path / "1" / MANIFEST).unlink()
        with caplog.at_level(logging.WARNING):
            checkpointer.restore(1)
    assert f"checkpoint {tmp_path / '1'} has no checksum manifest" in caplog.text


def test_keep_1_keeps_the_checkpoint_before_the_newest(tmp_path):
    """The newest checkpoint is not known sane until the step after it is finite: the one before stays."""
    with Checkpointer(tmp_path, keep=1) as checkpointer:
        for step in (1, 2, 3):
            checkpointer.save(step, state_at(step))
        checkpointer.wait()
        assert checkpointer.all_steps() == [2, 3]


def test_the_last_sane_checkpoint_is_one_the_next_step_was_finite_from():
    assert last_sane_checkpoint([4, 8], failed_step=11) == 8
    assert last_sane_checkpoint([4, 8], failed_step=9) == 4  # step 9 was trained from checkpoint 8
    assert last_sane_checkpoint([2], failed_step=3) is None


def test_the_loop_offers_to_release_memory_after_every_step_and_before_eval_or_save(tmp_path, monkeypatch):
    """`cpu_runtime.release_if_memory_low` runs once a step, and again once the step has finished before an
    evaluation or a checkpoint: a heap grown by fragmentation within a stage is trimmed before the machine
    runs out (the demo's SFT stage was OOM-killed without the first, and in float32 after its last step
    without the second)."""
    from instructjax import cpu_runtime
    from instructjax.train import Workdir, loop
    calls = []
    monkeypatch.setattr(cpu_runtime, "release_if_memory_low", lambda: calls.append("release") or False)

    def step_fn(state, batch, rng):
        calls.append("step")
        return {"step": state["step"] + 1}, {"loss": jnp.float32(0.5)}

    loop.run(loop.LoopConfig(num_steps=3, eval_every_steps=2, checkpoint_every_steps=0), Workdir.at(tmp_path / "run"),
             step_fn=step_fn, init_state=lambda: {"step": jnp.zeros((), jnp.int32)}, abstract_state=None,
             train_iterator=iter(grain.MapDataset.source([1, 2, 3]).to_iter_dataset()), rng=jax.random.key(0),
             eval_fn=lambda state, step: calls.append("eval") or {"loss": 0.5})
    assert calls == ["step", "release", "step", "release", "release", "eval", "step", "release", "release", "eval"]
