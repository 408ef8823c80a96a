"""The pipeline reads its JSONL files with the project's reader: errors name the file and line."""

import pytest

from instructjax.datasets import RecordError
from instructjax.pipeline import stages


def test_pretraining_texts_are_validated(tmp_path):
    path = tmp_path / "pretraining_heldout.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert stages._read_texts(path) == ["a", "b"]
    path.write_text('{"text": "a"}\n{"text": "b", "text": "c"}\n')
    with pytest.raises(RecordError, match=rf"^{path}:2: duplicate key 'text'"):
        stages._read_texts(path)
    assert stages._read_texts(tmp_path / "absent.jsonl") == []
