"""Demonstrations: prompt and response pairs written by people, for supervised fine-tuning (SFT)."""

import tensorflow_datasets as tfds

from instructjax.datasets.builder import JsonlBuilder


class Builder(JsonlBuilder):
    """Demonstrations from the JSONL files named by a `JsonlBuilderConfig` (see `instructjax.datasets.build`)."""

    KIND = "demonstrations"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
