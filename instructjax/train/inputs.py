"""A trainer's data: the built TFDS dataset (once, also on many hosts), and a check that the batch
splits over microbatches and devices."""

from __future__ import annotations

import os
from typing import Union

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from instructjax import datasets, parallel
from instructjax.train.config import dataset_config


def build_dataset(data: ml_collections.ConfigDict, kind: str,
                  default_dir: Union[str, os.PathLike]) -> datasets.BuiltDataset:
    """Build (or find) the dataset in `data.data_dir` (default: `default_dir`). With several hosts,
    process 0 builds it and the others wait, then open the same files."""
    config, data_dir = dataset_config(data, kind), data.data_dir or default_dir
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            datasets.build(config, data_dir)
        multihost_utils.sync_global_devices(f"instructjax: {kind} dataset built")
    return datasets.build(config, data_dir)


def check_batch_size(batch_size: int, microbatches: int, mesh: Mesh, name: str = "batch_size") -> None:
    """Each microbatch must split evenly over the mesh's batch axes (data x fsdp)."""
    shards = parallel.batch_shards(mesh)
    if batch_size % microbatches or (batch_size // microbatches) % shards:
        raise ValueError(f"config.{name}={batch_size} with microbatches={microbatches}: each microbatch of "
                         f"{batch_size / microbatches:g} rows must split over the {shards} data x fsdp devices")
