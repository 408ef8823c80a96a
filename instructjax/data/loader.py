"""The grain plumbing every pipeline shares: shuffle, host shards, counted drops, batches, state.

A pipeline is records -> shuffle by seed -> this host's shard -> repeat -> per-record tokenizing
map (threads, optionally worker processes) -> `Tally` (drops what the map rejected, counts it)
-> optional packing -> host batch -> global `jax.Array`s laid out over the mesh's batch axes.
`iter(loader)` gives a `BatchIterator`, a grain `DatasetIterator` whose `get_state`/`set_state`
(and so `grain.checkpoint.CheckpointSave/CheckpointRestore` with Orbax) resume exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from instructjax.datasets import features


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """Batching, order and parallelism of a pipeline."""

    batch_size: int  # global batch (rows over all hosts); each host loads batch_size / process_count
    seed: int = 0  # shuffle (reshuffled each epoch) and packing seed
    shuffle: bool = True  # False: records in source order (evaluation)
    num_epochs: int | None = None  # None: repeat forever; else stop after that many passes
    num_threads: int = 2  # threads of the per-record tokenizing map
    prefetch: int = 64  # records the threads read ahead
    worker_count: int = 0  # grain worker processes (mp_prefetch) for the map; 0: in this process


class Tokenized(NamedTuple):
    """What a per-record function returns: the element, or why the record is dropped."""

    element: dict[str, np.ndarray] | None
    dropped: str | None = None  # why the record is dropped: a key of DROP_REASONS
    truncated: bool = False  # the prompt was cut from the left to fit


def new_tally() -> dict[str, int]:
    """Counters of a pipeline: records read, prompts truncated, records dropped per reason."""
    return {"records": 0, "truncated": 0}


# What each drop reason means, for the console.
DROP_REASONS = {"overlong": "longer than data.max_len tokens",
                "overlong_prompt": "prompts longer than data.max_prompt_len tokens (data.truncation='truncate_prompt' "
                                   "keeps their end)",
                "too_many_completions": "more completions than data.max_completions"}


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (a collective every process must join)."""
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def global_tally(tally: dict[str, int]) -> dict[str, int]:
    """The counters summed over all processes (with several: a collective every process must join)."""
    if jax.process_count() == 1:
        return dict(tally)
    keys = ["records", "truncated", *(f"dropped_{reason}" for reason in DROP_REASONS)]
    local = np.asarray([tally.get(k, 0) for k in keys], np.int32)
    sums = np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)
    return {k: int(n) for k, n in zip(keys, sums) if n or not k.startswith("dropped_")}


def format_tally(tally: dict[str, int]) -> str:
    """The counters as one console line: records dropped (per reason) of those read, prompts truncated."""
    dropped = {k.removeprefix("dropped_"): n for k, n in tally.items() if k.startswith("dropped_")}
    reasons = "".join(f"; {n} {DROP_REASONS.get(r, r)}" for r, n in dropped.items())
    return (f"dropped {sum(dropped.values())} of {tally['records']} records read{reasons}; "
            f"{tally['truncated']} prompts truncated")


class _TallyIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, tally: dict[str, int], num_records: int):
        super().__init__(parent)
        self._tally, self._num_records = tally, num_records

    def __next__(self) -> dict[str, np.ndarray]:
        for _ in range(max(self._num_records, 1)):
            item: Tokenized = next(self._parent)
            self._tally["records"] += 1
            self._tally["truncated"] += int(item.truncated)
            if item.dropped is None:
                return item.element
            key = f"dropped_{item.dropped}"
            self._tally[key] = self._tally.get(key, 0) + 1
        raise ValueError(f"{self._num_records} records in a row were dropped, a whole epoch's worth "
                         f"(counts so far: {self._tally}): raise the length limits or use truncation")

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "tally": dict(self._tally)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._tally.clear()
        self._tally.update(state["tally"])


class Tally(grain.IterDataset):
    """Passes on the elements of `Tokenized` items and counts the truncated and dropped ones."""

    def __init__(self, parent: grain.IterDataset, tally: dict[str, int], num_records: int):
        super().__init__(parent)
        self._tally, self._num_records = tally, num_records

    def __iter__(self) -> grain.DatasetIterator:
        return _TallyIterator(self._parent.__iter__(), self._tally, self._num_records)


class BatchIterator(grain.DatasetIterator):
    """Global batches; `stats` counts records read, truncated and dropped so far over all processes
    (part of the state).

    A finite pass on several processes goes on while any process has a batch left: each process's share
    can end a batch earlier than another's (records dropped by one process only), and every process
    must take part in every step's collectives; a process whose share is done loads all-padding batches
    (zeros, every mask False), which every consumer of a finite pass already skips."""

    def __init__(self, parent: grain.DatasetIterator, tally: dict[str, int], mesh: jax.sharding.Mesh | None,
                 finite: bool):
        super().__init__(parent)
        self._tally, self._mesh = tally, mesh
        self._agree = finite and jax.process_count() > 1
        self._padding = None  # zeros shaped like this process's batches (a finite pass on several processes)

    @property
    def stats(self) -> dict[str, int]:
        return global_tally(self._tally)

    def __next__(self) -> dict[str, Any]:
        batch = self._next_of_all() if self._agree else next(self._parent)
        return batch if self._mesh is None else global_batch(batch, self._mesh)

    def _next_of_all(self) -> dict[str, Any]:
        batch = next(self._parent, None)
        if batch is not None and self._padding is None:
            self._padding = jax.tree.map(np.zeros_like, batch)
        if not any_process(batch is not None):
            raise StopIteration
        if batch is None and self._padding is None:
            raise ValueError(f"process {jax.process_index()} loaded no batch of a finite pass that others have "
                             "batches of: every record of its share was dropped")
        return self._padding if batch is None else batch

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class Loader:
    """An iterable of batches; every `iter()` starts from the beginning with fresh counters."""

    def __init__(self, build: Callable[[dict[str, int]], grain.IterDataset], *, num_records: int,
                 mesh: jax.sharding.Mesh | None, config: LoaderConfig):
        self._build, self._mesh = build, mesh
        self._finite = config.num_epochs is not None
        self.num_records = num_records  # records per epoch over all hosts (before drops)

    def __iter__(self) -> BatchIterator:
        tally = new_tally()
        return BatchIterator(self._build(tally).__iter__(), tally, self._mesh, self._finite)


def host_batch_size(config: LoaderConfig) -> int:
    """Rows this host loads per step."""
    count = jax.process_count()
    if config.batch_size % count:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the {count} processes")
    return config.batch_size // count


def sharded_records(source: Sequence[Any] | grain.MapDataset, kind: str, config: LoaderConfig) -> grain.MapDataset:
    """Decoded records of this host for one epoch: shuffled globally by seed, then split evenly
    (`tokenized_stream` repeats them for the configured epochs, reshuffled each epoch). Each record
    carries `index`, its position in `source`, so that any host can look it up again (`prompt_texts`).

    The processes take blocks of `host_batch_size` records in turn, so that a global batch holds
    the records in the order one process would load them (the same batches on any number of
    processes, when no record is dropped and the epoch is a multiple of the batch); the epoch's
    last partial round is dealt one record at a time. Each epoch leaves `len % process_count`
    records out (different ones each epoch when shuffled), so that every host sees as many.
    """
    ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    ds = ds.map_with_index(functools.partial(_decode_at, kind, len(ds)))  # before the shuffle: source positions
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    index, count = jax.process_index(), jax.process_count()
    positions = host_positions(len(ds), host_batch_size(config), index, count)
    if not len(positions):
        raise ValueError(f"no records for process {index} of {count} (the source has {len(source)})")
    if count == 1:
        return ds
    return grain.MapDataset.source(positions).map_with_index(functools.partial(_epoch_record, ds, len(positions)))


def host_positions(length: int, block: int, index: int, count: int) -> np.ndarray:
    """Positions in an epoch of `length` records of process `index`'s records: its block of `block`
    in each full round of `count` blocks, then every `count`-th of the rest (`length % count` left out)."""
    full = length // (block * count) * block * count
    rest = np.arange(full, length - (length - full) % count)
    return np.concatenate([np.arange(full).reshape(-1, count, block)[:, index].ravel(), rest[index::count]])


def _epoch_record(ds: grain.MapDataset, per_epoch: int, i: int, position: np.int64) -> dict[str, Any]:
    # a repeated source asks for i past its end in later epochs: read the same position of that epoch
    return ds[int(position) + i // per_epoch * len(ds)]


def _decode_at(kind: str, length: int, index: int, stored: dict[str, Any]) -> dict[str, Any]:
    # a source dataset reads index i at i % length (later epochs ask for indices past the end)
    return {**features.decode(kind, stored), "index": index % length}


def tokenized_stream(records: grain.MapDataset, tokenize: Callable[[dict[str, Any]], Tokenized],
                     config: LoaderConfig, tally: dict[str, int]) -> grain.IterDataset:
    """One epoch's `records` repeated for `config.num_epochs`, mapped by `tokenize` on threads (and
    worker processes); rejected ones counted and dropped, an error when a whole epoch's are."""
    ds = records.repeat(config.num_epochs).map(tokenize).to_iter_dataset(
        grain.ReadOptions(num_threads=config.num_threads, prefetch_buffer_size=config.prefetch))
    if config.worker_count:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; notebooks and tests never parse them
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    return Tally(ds, tally, len(records))


def batched(ds: grain.IterDataset, config: LoaderConfig) -> grain.IterDataset:
    """Host batches. Forever-repeating pipelines give full batches; finite ones pad the last batch
    with all-zero rows (every mask False) so that no record is dropped."""
    size = host_batch_size(config)
    if config.num_epochs is None:
        return ds.batch(size, drop_remainder=True)
    return ds.batch(size, batch_fn=functools.partial(_stack_and_pad, size=size))


def _stack_and_pad(elements: Sequence[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    """Stacked elements, padded to `size` rows of zeros (False, 0, empty strings)."""
    def stack(*xs: np.ndarray) -> np.ndarray:
        x = np.stack(xs)
        return np.concatenate([x, np.zeros((size - len(xs), *x.shape[1:]), x.dtype)])

    return jax.tree.map(stack, *elements)


def global_batch(batch: dict[str, Any], mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Host batches -> global arrays split over the mesh's batch axes; text stays host-local numpy."""
    from instructjax.parallel import batch_sharding  # pylint: disable=import-outside-toplevel

    count = jax.process_count()

    def put(x: np.ndarray) -> Any:
        if x.dtype.kind not in "biuf":  # strings
            return x
        global_shape = (x.shape[0] * count, *x.shape[1:])
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x, global_shape)

    return {k: put(v) for k, v in batch.items()}
