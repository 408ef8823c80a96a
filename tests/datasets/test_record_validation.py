"""Every kind of bad record stops the build with an error naming the file and the line."""

import json

import pytest

from instructjax import datasets
from instructjax.datasets.jsonl import read_jsonl

GOOD = {
    "demonstrations": {"prompt": "Say hi.", "response": "Hi."},
    "comparisons": {"prompt": "Say hi.", "completions": ["Hi.", "Go away."], "ranking": [0, 1]},
    "prompts": {"prompt": "Say hi."},
    "pretraining_text": {"text": "Some text."},
}

# (kind, the third line of the file, what the message says)
BAD = {
    "malformed_json": ("demonstrations", '{"prompt": "a", "response": ', "malformed JSON"),
    "not_an_object": ("prompts", '["a prompt"]', "expected a JSON object, got list"),
    "missing_field": ("demonstrations", {"prompt": "a"}, "missing field(s) 'response'"),
    "extra_field": ("demonstrations", {"prompt": "a", "response": "b", "id": 3}, "unexpected field(s) 'id'"),
    "wrong_type_prompt": ("prompts", {"prompt": 7}, "must be a string or a list of messages, got int"),
    "wrong_type_response": ("demonstrations", {"prompt": "a", "response": ["b"]}, "'response' must be a string"),
    "wrong_type_text": ("pretraining_text", {"text": None}, "'text' must be a string, got null"),
    "empty_prompt": ("demonstrations", {"prompt": "  ", "response": "b"}, "field 'prompt' is empty"),
    "empty_response": ("demonstrations", {"prompt": "a", "response": ""}, "field 'response' is empty"),
    "empty_messages": ("prompts", {"prompt": []}, "empty list of messages"),
    "bad_message": ("prompts", {"prompt": [{"role": "user"}]}, "exactly 'role' and 'content'"),
    "bad_role": ("prompts", {"prompt": [{"role": "usr", "content": "a"}]}, "role must be one of"),
    "empty_message": ("prompts", {"prompt": [{"role": "user", "content": ""}]}, "content is empty"),
    "ranking_not_ints": ("comparisons", {"prompt": "a", "completions": ["x", "y"], "ranking": [0, 1.0]},
                         "must be a list of 2 integers"),
    "ranking_bools": ("comparisons", {"prompt": "a", "completions": ["x", "y"], "ranking": [False, True]},
                      "must be a list of 2 integers"),
    "ranking_wrong_length": ("comparisons", {"prompt": "a", "completions": ["x", "y", "z"], "ranking": [0, 1]},
                             "has 2 entries for K = 3"),
    "ranking_out_of_range": ("comparisons", {"prompt": "a", "completions": ["x", "y"], "ranking": [0, 2]},
                             "must be in [0, 1]"),
    "k_below_2": ("comparisons", {"prompt": "a", "completions": ["x"], "ranking": [0]}, "K >= 2"),
    "all_tied": ("comparisons", {"prompt": "a", "completions": ["x", "y", "z"], "ranking": [1, 1, 1]},
                 "all 3 completions are tied"),
    "duplicate_completions": ("comparisons", {"prompt": "a", "completions": ["x", "y", "x"], "ranking": [0, 1, 2]},
                              "completions 0 and 2 are identical"),
    "chosen_equals_rejected": ("comparisons", {"prompt": "a", "chosen": "x", "rejected": "x"}, "identical"),
    "empty_completion": ("comparisons", {"prompt": "a", "completions": ["x", " "], "ranking": [0, 1]},
                         "completion 1 is empty"),
    "mixed_forms": ("comparisons", {"prompt": "a", "chosen": "x", "rejected": "y", "ranking": [0, 1]},
                    "unexpected field(s) 'ranking'"),
}


def write(path, kind, third_line):
    line = third_line if isinstance(third_line, str) else json.dumps(third_line)
    path.write_text("\n".join([json.dumps(GOOD[kind])] * 2 + [line, json.dumps(GOOD[kind])]) + "\n")
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_names_file_and_line(case, tmp_path):
    kind, line, what = BAD[case]
    path = write(tmp_path / f"{case}.jsonl", kind, line)
    with pytest.raises(datasets.RecordError) as info:
        datasets.build(datasets.DatasetConfig(kind, (path,)), tmp_path / "data")
    assert str(info.value).startswith(f"{path}:3: ")
    assert what in str(info.value)
    assert (info.value.path, info.value.line) == (path, 3)


def test_bad_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD["prompts"]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(datasets.RecordError, match=rf"^{path}:2: not valid UTF-8"):
        datasets.build(datasets.DatasetConfig("prompts", (str(path),)), tmp_path / "data")


def test_failed_build_leaves_nothing_and_a_fixed_file_builds(tmp_path):
    path = write(tmp_path / "d.jsonl", "demonstrations", {"prompt": "a"})
    with pytest.raises(datasets.RecordError):
        datasets.build(datasets.DatasetConfig("demonstrations", (path,)), tmp_path / "data")
    assert not list((tmp_path / "data").rglob("*.array_record*"))
    write(tmp_path / "d.jsonl", "demonstrations", GOOD["demonstrations"])
    built = datasets.build(datasets.DatasetConfig("demonstrations", (path,)), tmp_path / "data")
    assert built.summary["splits"] == {"train": 4}


def test_blank_lines_are_not_records_and_line_numbers_count_them(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": 1}\n')
    with pytest.raises(datasets.RecordError, match=rf"^{path}:4: "):
        list(read_jsonl("prompts", path))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown record kind"):
        datasets.DatasetConfig("dialogues", ("a.jsonl",))
    with pytest.raises(ValueError, match="not both"):
        datasets.DatasetConfig("prompts", ("a.jsonl",), validation_files=("b.jsonl",), validation_fraction=0.1)
    with pytest.raises(ValueError, match="all_tied"):
        datasets.DatasetConfig("comparisons", ("a.jsonl",), all_tied="ignore")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        datasets.build(datasets.DatasetConfig("prompts", (str(tmp_path / "missing.jsonl"),)), tmp_path / "data")


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file_is_named(text, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"no records in {path} \(the file is empty or blank\)"):
        datasets.build(datasets.DatasetConfig("prompts", (str(path),), validation_fraction=0.2), tmp_path / "data")


def test_malformed_json_reports_the_column_of_the_fault(tmp_path):
    path = write(tmp_path / "d.jsonl", "demonstrations", '{"prompt": "a", "response": "b"')
    with pytest.raises(datasets.RecordError, match=r":3: malformed JSON at column 32 \(end of line\): Expecting ','"):
        list(read_jsonl("demonstrations", path))


def test_duplicate_key_is_refused(tmp_path):
    path = write(tmp_path / "d.jsonl", "demonstrations", '{"prompt": "a", "response": "b", "prompt": "c"}')
    with pytest.raises(datasets.RecordError, match=rf"^{path}:3: duplicate key 'prompt'"):
        list(read_jsonl("demonstrations", path))


def test_all_tied_advice_names_a_config_field(tmp_path):
    from instructjax.train import config as train_config
    data = train_config.comparison_rows(train_config.data_config("comparisons"))
    path = write(tmp_path / "c.jsonl", "comparisons", BAD["all_tied"][1])
    with pytest.raises(datasets.RecordError, match=r"--config.data.all_tied=skip"):
        list(read_jsonl("comparisons", path))
    data.train_files, data.all_tied = (path,), "skip"
    built = datasets.build(train_config.dataset_config(data, "comparisons"), tmp_path / "data")
    assert built.summary["skipped"]["all_tied"] == 1
