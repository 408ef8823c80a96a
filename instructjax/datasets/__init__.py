"""TFDS datasets of the four record kinds (one builder folder each), built from JSONL files.

    built = ij.datasets.build(ij.datasets.DatasetConfig("demonstrations", ("demos.jsonl",),
                                                        validation_fraction=0.1), data_dir)
    records = built.source("train")   # random access, no TensorFlow needed
"""

from instructjax.datasets.build import BUILDERS, EXAMPLES_DIR, BuiltDataset, build, example_config, load
from instructjax.datasets.builder import DatasetConfig, format_summary
from instructjax.datasets.catalog import CatalogConfig, catalog_source
from instructjax.datasets.features import decode
from instructjax.datasets.jsonl import KINDS, RecordError, read_jsonl

__all__ = [
    "BUILDERS", "EXAMPLES_DIR", "KINDS", "BuiltDataset", "CatalogConfig", "DatasetConfig", "RecordError",
    "build", "catalog_source", "decode", "example_config", "format_summary", "load", "read_jsonl",
]
