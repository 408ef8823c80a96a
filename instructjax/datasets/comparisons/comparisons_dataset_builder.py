"""Comparisons: K >= 2 completions of a prompt ranked by a labeler (0 = best, ties allowed), for reward modelling."""

import tensorflow_datasets as tfds

from instructjax.datasets.builder import JsonlBuilder


class Builder(JsonlBuilder):
    """Comparisons from the JSONL files named by a `JsonlBuilderConfig` (see `instructjax.datasets.build`)."""

    KIND = "comparisons"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
