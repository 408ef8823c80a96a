"""Build a dataset from JSONL files (or find it already built) and open its splits."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from instructjax.datasets.builder import SUMMARY_KEY, DatasetConfig, builder_config, format_summary
from instructjax.datasets.comparisons.comparisons_dataset_builder import Builder as ComparisonsBuilder
from instructjax.datasets.demonstrations.demonstrations_dataset_builder import Builder as DemonstrationsBuilder
from instructjax.datasets.jsonl import check_kind
from instructjax.datasets.pretraining_text.pretraining_text_dataset_builder import Builder as PretrainingTextBuilder
from instructjax.datasets.prompts.prompts_dataset_builder import Builder as PromptsBuilder

BUILDERS = {
    "demonstrations": DemonstrationsBuilder,
    "comparisons": ComparisonsBuilder,
    "prompts": PromptsBuilder,
    "pretraining_text": PretrainingTextBuilder,
}
EXAMPLES_DIR = os.path.join(os.path.dirname(__file__), "examples")


@dataclasses.dataclass(frozen=True)
class BuiltDataset:
    """A prepared dataset: where its ArrayRecord files are and what its build kept and skipped."""

    kind: str
    directory: str  # <data_dir>/<kind>/<config name>/<version>
    tfds_name: str  # "<kind>/<config name>:<version>", for tfds.data_source(name, data_dir=...)
    summary: dict[str, Any]  # records per split and file, skipped records per reason
    reused: bool  # True when the inputs were unchanged and nothing was rebuilt

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.summary["splits"])

    def source(self, split: str = "train") -> Sequence[dict[str, Any]]:
        """Random-access records of `split` (`tfds.data_source`; no TensorFlow needed)."""
        if split not in self.summary["splits"]:
            raise KeyError(f"{self.tfds_name} has splits {self.splits}, not {split!r}")
        return tfds.builder_from_directory(self.directory).as_data_source(split=split)


def build(config: DatasetConfig, data_dir: str | os.PathLike) -> BuiltDataset:
    """Validates and builds `config` into `data_dir`, unless a build of the same inputs is there.

    Raises `jsonl.RecordError` (naming the file and line) on the first bad record; logs the summary.
    """
    cls = BUILDERS[config.kind]
    builder = cls(config=builder_config(config, str(cls.VERSION)), data_dir=os.fspath(data_dir),
                  file_format="array_record")
    reused = builder.is_prepared()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    built = _built(builder, reused)
    logging.info("%s %s\n%s", "Reusing" if reused else "Built", built.directory, format_summary(built.summary))
    return built


def load(directory: str | os.PathLike) -> BuiltDataset:
    """A dataset built earlier, from its version directory (`BuiltDataset.directory`)."""
    return _built(tfds.builder_from_directory(os.fspath(directory)), reused=True)


def example_config(kind: str, **overrides: Any) -> DatasetConfig:
    """The shipped example dataset of `kind` (instructjax/datasets/examples), 20% for validation."""
    settings = {"train_files": (os.path.join(EXAMPLES_DIR, f"{check_kind(kind)}.jsonl"),),
                "validation_fraction": 0.2, "name": "example"} | overrides
    return DatasetConfig(kind=kind, **settings)


def _built(builder: tfds.core.DatasetBuilder, reused: bool) -> BuiltDataset:
    summary = builder.info.metadata.get(SUMMARY_KEY)
    if summary is None:
        raise ValueError(f"{builder.data_dir}: not an instructjax dataset (no {SUMMARY_KEY} in metadata.json)")
    return BuiltDataset(kind=summary["kind"], directory=os.fspath(builder.data_dir),
                        tfds_name=f"{builder.name}/{builder.builder_config.name}:{builder.version}",
                        summary=summary, reused=reused)
