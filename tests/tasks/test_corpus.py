"""The standard-library docstring corpus: many English records, nothing imported, deterministic."""

import json
import subprocess
import sys

import pytest

from instructjax.datasets.jsonl import read_jsonl
from instructjax.tasks import corpus


@pytest.fixture(scope="module")
def texts():
    return corpus.stdlib_docstrings()


def test_many_english_docstrings(texts):
    assert len(texts) > 1000 and len(set(texts)) == len(texts)
    assert all(len(t) >= 200 and t == t.strip() for t in texts)
    assert sum(" the " in t for t in texts) > 0.9 * len(texts)
    assert not any(t.startswith(" ") for t in texts)  # cleaned: no common indentation left


def test_deterministic_and_limited(texts):
    assert corpus.stdlib_docstrings(max_records=50) == texts[:50]
    assert len(corpus.stdlib_docstrings(max_records=10, min_chars=2000)) == 10


def test_no_module_is_imported():
    """In a fresh interpreter: reading the corpus imports none of the modules it reads (only the
    codecs that decode source files with a coding cookie are loaded)."""
    code = ("import importlib.util, json, sys\n"  # the module alone: importing instructjax would take seconds
            f"spec = importlib.util.spec_from_file_location('corpus', {corpus.__file__!r})\n"
            "corpus = importlib.util.module_from_spec(spec); spec.loader.exec_module(corpus)\n"
            "corpus.sysconfig.get_paths(); before = set(sys.modules); corpus.stdlib_docstrings()\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    new = json.loads(out)
    assert "antigravity" not in new and "this" not in new
    assert all(name.startswith("encodings.") for name in new), new


def test_write_pretraining_jsonl(tmp_path, texts):
    path = tmp_path / "pretrain.jsonl"
    assert corpus.write_pretraining_jsonl(path, texts[:30]) == 30
    records = [r.record for r in read_jsonl("pretraining_text", path)]
    assert records == [{"text": t} for t in texts[:30]]
    with pytest.raises(ValueError, match="text 1 is empty"):
        corpus.write_pretraining_jsonl(path, ["fine", " "])
