"""Prompts or pretraining text from any TFDS catalog dataset with a text field, by name.

For users with network access: `download=True` prepares the dataset on first use (it must be
readable as ArrayRecord, which `tfds.data_source` asks for). Tests use a local fake, never the
network.
"""

from __future__ import annotations

import dataclasses
import os

import grain
import tensorflow_datasets as tfds

_FIELD_OF_KIND = {"prompts": "prompt", "pretraining_text": "text"}


@dataclasses.dataclass(frozen=True)
class CatalogConfig:
    """A text field of a TFDS catalog dataset, read as prompts or pretraining text."""

    name: str  # TFDS name, optionally with config and version: "imdb_reviews/plain_text:1.0.0"
    split: str  # TFDS split, slicing allowed: "train", "train[:10%]"
    field: str  # the text feature; nested features as "a/b"
    kind: str = "prompts"  # prompts | pretraining_text
    download: bool = False  # prepare the dataset when it is not in data_dir yet (needs network)

    def __post_init__(self):
        if self.kind not in _FIELD_OF_KIND:
            raise ValueError(f"a catalog dataset feeds {tuple(_FIELD_OF_KIND)}, not {self.kind!r}")


def catalog_source(config: CatalogConfig, data_dir: str | os.PathLike | None = None) -> grain.MapDataset:
    """Records `{"prompt" or "text": str, "source": "name[split][index]"}` of the catalog dataset."""
    source = tfds.data_source(config.name, split=config.split, download=config.download,
                              data_dir=None if data_dir is None else os.fspath(data_dir))
    field, path = _FIELD_OF_KIND[config.kind], config.field.split("/")

    def record(index: int, example: dict) -> dict[str, str]:
        value = example
        for key in path:
            if not isinstance(value, dict) or key not in value:
                raise KeyError(f"{config.name}[{config.split}][{index}] has no field {config.field!r}; "
                               f"its features are {sorted(example)}")
            value = value[key]
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        if not isinstance(text, str):
            raise TypeError(f"{config.name}: field {config.field!r} is {type(text).__name__}, not text")
        return {field: text, "source": f"{config.name}[{config.split}][{index}]"}

    return grain.MapDataset.source(source).map_with_index(record)
