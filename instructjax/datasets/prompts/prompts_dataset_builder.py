"""Prompts: prompts for sampling (PPO rollouts, evaluation)."""

import tensorflow_datasets as tfds

from instructjax.datasets.builder import JsonlBuilder


class Builder(JsonlBuilder):
    """Prompts from the JSONL files named by a `JsonlBuilderConfig` (see `instructjax.datasets.build`)."""

    KIND = "prompts"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
