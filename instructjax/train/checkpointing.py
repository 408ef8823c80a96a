"""Checkpoints of a run: the train state and the data iterator's position, through one Orbax
`CheckpointManager` (async writes, keep the last N, atomic: a checkpoint only counts once finalized),
each with a checksum manifest written before it is finalized and verified before it is restored."""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any, Optional, Union

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint.utils import TMP_DIR_SUFFIX

from instructjax.train.checkpoint_checks import BadCheckpointError, check_finite, verify_manifest, write_manifest

STATE, DATA = "state", "data"
REJECTED = "rejected"  # bad checkpoints are moved to DIRECTORY/rejected/<step>


class Checkpointer:
    """Saves and restores `(state, data iterator)` pairs under `directory/<step>/{state,data}`, with
    `directory/<step>/checksums.json`. At least 2 checkpoints are kept (`keep` < 2 keeps 2): the newest
    is only known sane once the step trained from it is finite, so the one before stays until then."""

    def __init__(self, directory: Union[str, os.PathLike], *, keep: int, async_save: bool = True):
        # Orbax always writes in the background here (its post-finalization callback, where the manifest is
        # written, needs that); `async_save=False` waits for each write
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(keep, 2), enable_async_checkpointing=True, create=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest))
        self.directory = os.fspath(directory)
        self.async_save = async_save
        self._saving: Optional[int] = None
        self.manager = ocp.CheckpointManager(self.directory, item_names=(STATE, DATA), options=options)

    def step_dir(self, step: int) -> pathlib.Path:
        return pathlib.Path(self.directory) / str(step)

    def latest_step(self) -> Optional[int]:
        """The newest finalized checkpoint (an interrupted write never counts)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Optional[grain.DatasetIterator] = None) -> None:
        """Start writing checkpoint `step` (returns once the arrays are copied off the devices)."""
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.wait_until_finished()  # Orbax waits for the previous write anyway; `_saving` is its step
        self._saving = step
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        if not self.async_save:
            self.wait()

    def _write_manifest(self) -> None:
        """Orbax's post-finalization callback: every file is written, the directory not yet renamed to
        its final name (on file systems without atomic rename it already has it)."""
        if jax.process_index() != 0:
            return
        final = self.step_dir(self._saving)
        tmp = final.with_name(final.name + TMP_DIR_SUFFIX)
        write_manifest(tmp if tmp.is_dir() else final)

    def restore(self, step: int, abstract_state: Any = None,
                data_iterator: Optional[grain.DatasetIterator] = None) -> Any:
        """The state of checkpoint `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings;
        None: as saved, nested dicts of arrays); `data_iterator` is moved to the saved position in place.
        A `BadCheckpointError` when its files differ from its manifest or its state is not finite (the data
        iterator is then left where it was)."""
        step_dir = self.step_dir(step)
        if not verify_manifest(step_dir):
            logging.warning("checkpoint %s has no checksum manifest (written before manifests): not verified",
                            step_dir)
        state = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)}))
        check_finite(state[STATE], step_dir)
        if data_iterator is not None:
            self.manager.restore(step, args=ocp.args.Composite(**{DATA: grain.checkpoint.CheckpointRestore(data_iterator)}))
        return state[STATE]

    def restore_newest_good(self, abstract_state: Any = None, data_iterator: Optional[grain.DatasetIterator] = None
                            ) -> tuple[Optional[int], Any]:
        """(step, state) of the newest checkpoint that restores (see `restore`); each newer bad one is moved
        to DIRECTORY/rejected/<step> with a warning. (None, None) when there is none."""
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, abstract_state, data_iterator)
            except BadCheckpointError as e:
                self._reject(step, e)
        return None, None

    def _reject(self, step: int, error: BadCheckpointError) -> None:
        target = pathlib.Path(self.directory) / REJECTED / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            self.step_dir(step).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} rejected")
        self.manager.reload()
        logging.warning("%s; moved to %s, falling back to the checkpoint before it", error, target)

    def wait(self) -> None:
        """Block until every started write is finalized."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
