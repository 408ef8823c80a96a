"""Checkpoints of a run: the train state and the data iterator's position, through one Orbax
`CheckpointManager` (async writes, keep the last N, atomic: a checkpoint only counts once finalized)."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import grain
import orbax.checkpoint as ocp

STATE, DATA = "state", "data"


class Checkpointer:
    """Saves and restores `(state, data iterator)` pairs under `directory/<step>/{state,data}`."""

    def __init__(self, directory: Union[str, os.PathLike], *, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.directory = os.fspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, item_names=(STATE, DATA), options=options)

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
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: Any = None,
                data_iterator: Optional[grain.DatasetIterator] = None) -> Any:
        """The state of checkpoint `step`, laid out as `abstract_state` (ShapeDtypeStructs with shardings;
        None: as saved, nested dicts of arrays); `data_iterator` is moved to the saved position in place."""
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def wait(self) -> None:
        """Block until every started write is finalized."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
