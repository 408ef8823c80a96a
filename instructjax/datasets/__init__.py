"""TFDS datasets of the four record kinds (one builder folder each), built from JSONL files.

    built = ij.datasets.build(ij.datasets.DatasetConfig("demonstrations", ("demos.jsonl",),
                                                        validation_fraction=0.1), data_dir)
    records = built.source("train")   # random access, no TensorFlow needed
"""

from instructjax.datasets.build import EXAMPLES_DIR, BuiltDataset, build, example_config, load
from instructjax.datasets.builder import DatasetConfig, format_summary
from instructjax.datasets.features import decode
from instructjax.datasets.jsonl import RecordError

__all__ = ["EXAMPLES_DIR", "BuiltDataset", "DatasetConfig", "RecordError", "build", "decode", "example_config",
           "format_summary", "load"]
