"""Pretraining text: plain text passages for the language-modelling term of PPO-ptx."""

import tensorflow_datasets as tfds

from instructjax.datasets.builder import JsonlBuilder


class Builder(JsonlBuilder):
    """Pretraining text from the JSONL files named by a `JsonlBuilderConfig` (see `instructjax.datasets.build`)."""

    KIND = "pretraining_text"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
