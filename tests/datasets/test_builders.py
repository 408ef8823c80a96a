"""The four builders: build from the shipped examples, read back without TensorFlow, skip rebuilds."""

import importlib.util
import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from instructjax import datasets
from instructjax.datasets.jsonl import KINDS, read_jsonl


def records_of(kind, path):
    return [p.record for p in read_jsonl(kind, path)]


@pytest.mark.parametrize("kind", KINDS)
def test_builds_examples_and_reads_them_back(kind, tmp_path, capsys):
    config = datasets.example_config(kind)
    built = datasets.build(config, tmp_path)
    assert "Downloading" not in capsys.readouterr().out  # nothing is downloaded: TFDS's announcement is not shown
    expected = records_of(kind, config.train_files[0])
    n_val = round(0.2 * len(expected))
    assert built.summary["splits"] == {"train": len(expected) - n_val, "validation": n_val}
    assert built.summary["skipped"] == {"overlong": 0, "all_tied": 0}
    assert not built.reused and built.splits == ("train", "validation")

    # tfds.data_source by name and builder_from_directory read the same ArrayRecord files.
    by_name = tfds.data_source(built.tfds_name, data_dir=tmp_path)
    read = [datasets.decode(kind, r) for split in ("train", "validation") for r in by_name[split]]
    sources = [r.pop("source") for r in read]
    assert len(set(sources)) == len(sources)
    lines = sorted(int(s.rsplit(":", 1)[1]) for s in sources)
    assert lines == list(range(1, len(expected) + 1))
    by_line = dict(zip((int(s.rsplit(":", 1)[1]) for s in sources), read))
    assert [by_line[i + 1] for i in range(len(expected))] == expected
    assert len(built.source("validation")) == n_val
    assert datasets.load(built.directory).summary == built.summary


def test_rebuild_is_skipped_until_the_content_changes(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    config = datasets.DatasetConfig("prompts", (str(src),))
    first = datasets.build(config, tmp_path / "data")
    files = sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    again = datasets.build(config, tmp_path / "data")
    assert again.reused and again.directory == first.directory
    assert [p.stat().st_mtime_ns for p in files] == stamps
    src.write_text('{"prompt": "a"}\n{"prompt": "c"}\n')
    changed = datasets.build(config, tmp_path / "data")
    assert not changed.reused and changed.directory != first.directory
    assert [datasets.decode("prompts", r)["prompt"] for r in changed.source()] == ["a", "c"]


def test_split_by_files_and_by_seeded_fraction(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(20)))
    val.write_text('{"text": "v0"}\n{"text": "v1"}\n')
    by_files = datasets.build(datasets.DatasetConfig("pretraining_text", (str(train),), (str(val),)), tmp_path)
    assert by_files.summary["splits"] == {"train": 20, "validation": 2}

    def validation_texts(seed):
        built = datasets.build(datasets.DatasetConfig("pretraining_text", (str(train),), validation_fraction=0.25,
                                                      split_seed=seed), tmp_path)
        assert built.summary["splits"] == {"train": 15, "validation": 5}
        return sorted(datasets.decode("pretraining_text", r)["text"] for r in built.source("validation"))

    assert validation_texts(0) == validation_texts(0)
    assert validation_texts(0) != validation_texts(1)


def test_skipped_records_are_counted_per_file(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "p", "completions": ["x", "y"], "ranking": [0, 1]},
        {"prompt": "p", "completions": ["x", "y"], "ranking": [1, 1]},
        {"prompt": "p", "chosen": "x" * 50, "rejected": "y"},
    ]) + "\n")
    b.write_text(json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}) + "\n")
    config = datasets.DatasetConfig("comparisons", (str(a), str(b)), max_chars=40, all_tied="skip")
    built = datasets.build(config, tmp_path / "data")
    assert built.summary["splits"] == {"train": 2}
    assert built.summary["skipped"] == {"overlong": 1, "all_tied": 1}
    assert [f["skipped"] for f in built.summary["files"]] == [{"overlong": 1, "all_tied": 1},
                                                              {"overlong": 0, "all_tied": 0}]
    assert "skipped: overlong 1, all_tied 1" in datasets.format_summary(built.summary)
    records = [datasets.decode("comparisons", r) for r in built.source()]
    assert records[1] == {"source": f"{b}:1", "prompt": "q", "completions": ["good", "bad"], "ranking": [0, 1]}
    assert isinstance(built.source()[0]["ranking"], np.ndarray)


def test_everything_skipped_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "far too long"}\n')
    with pytest.raises(ValueError, match="train split has no records left"):
        datasets.build(datasets.DatasetConfig("pretraining_text", (str(path),), max_chars=3), tmp_path)


def test_chat_message_prompts_round_trip(tmp_path):
    path = tmp_path / "d.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    path.write_text(json.dumps({"prompt": messages, "response": "Hello."}) + "\n")
    built = datasets.build(datasets.DatasetConfig("demonstrations", (str(path),)), tmp_path)
    assert datasets.decode("demonstrations", built.source()[0])["prompt"] == messages


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed here")
def test_builds_and_reads_without_tensorflow(tmp_path):
    built = datasets.build(datasets.example_config("comparisons"), tmp_path)
    record = datasets.decode("comparisons", tfds.data_source(built.tfds_name, data_dir=tmp_path, split="train")[0])
    assert len(record["completions"]) == len(record["ranking"])
    assert "tensorflow" not in sys.modules
