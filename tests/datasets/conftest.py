"""Dataset tests build into temporary data dirs and never reach the network."""

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import gcs_utils


@pytest.fixture(autouse=True)
def _offline_tfds(monkeypatch, tmp_path):
    monkeypatch.setattr(gcs_utils, "_is_gcs_disabled", True)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))
    tfds.disable_progress_bar()
