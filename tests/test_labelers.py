"""Labelers: the constraint labeler's rankings, comparison records, and the terminal session
(scripted in-process, and experiments/label.py killed and restarted as a subprocess)."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from instructjax import datasets, labelers
from instructjax.datasets.jsonl import read_jsonl
from instructjax.datasets.jsonl import validate
from instructjax.tasks.constraints import make_constraint
from instructjax.tasks.instructions import TaskPrompt
from instructjax.labelers.ranking import dense_ranks
from instructjax.labelers.session import SessionSummary, parse_ranking

LABEL_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "label.py"

TOMATOES = TaskPrompt.create("Give me some advice about growing tomatoes.", "growing tomatoes",
                             (make_constraint("max_words", n=10), make_constraint("lowercase")))


def test_dense_ranks_and_unique_completions():
    assert dense_ranks([3, 7, 3, 1]) == [1, 0, 1, 2]
    assert dense_ranks([(1, 0.5), (1, 0.7), (0, 0.9)]) == [1, 0, 2]
    assert labelers.unique_completions(["x", "y", "x", " ", "z", "y"]) == ["x", "y", "z"]


def test_constraint_labeler_ranks_by_constraints_then_quality():
    labeler = labelers.ConstraintLabeler([TOMATOES])
    completions = [
        "grow tomatoes in full sun and water them every day.",  # both constraints, on topic
        "Grow tomatoes in full sun and water them every day.",  # capital letter: one constraint
        "Paris is lovely and Rome is lovely too, I think, as do many tourists.",  # none
        "grow tomatoes in full sun, and water them every day!",  # same score as the first: tie
        "paris is lovely in spring.",  # both constraints, off topic and short
    ]
    assert labeler.score(TOMATOES.prompt, completions[0]) == (2, 1.0)
    assert labeler.rank(TOMATOES.prompt, completions) == [0, 2, 3, 0, 1]


def test_constraint_labeler_unknown_prompt():
    labeler = labelers.ConstraintLabeler([TOMATOES])
    with pytest.raises(KeyError, match="unknown prompt 'Hi.'"):
        labeler.rank("Hi.", ["a", "b"])


def test_rank_to_comparison():
    record = labelers.rank_to_comparison("Say hi.", ["Hi.", "Hello!", "Go away."], [0, 3, 3])
    assert record == {"prompt": "Say hi.", "completions": ["Hi.", "Hello!", "Go away."], "ranking": [0, 1, 1]}
    assert validate("comparisons", record) == record
    assert labelers.rank_to_comparison("Say hi.", ["Hi.", "Hello!"], [1, 1]) is None
    with pytest.raises(ValueError, match="distinct and non-blank"):
        labelers.rank_to_comparison("Say hi.", ["Hi.", "Hi."], [0, 1])
    with pytest.raises(ValueError, match="2 ranks for 3 completions"):
        labelers.rank_to_comparison("Say hi.", ["a", "b", "c"], [0, 1])


@pytest.mark.parametrize("answer, ranks", [("b a c", [1, 0, 2]), ("b=a c", [0, 0, 1]), (" C = A   b ", [0, 1, 0])])
def test_parse_ranking(answer, ranks):
    assert parse_ranking(answer, 3) == ranks


@pytest.mark.parametrize("answer, message", [
    ("", "empty answer"), ("a b", "(c) not ranked"), ("a a b c", "(a) is ranked twice"),
    ("a b d", "unknown completion 'd'"), ("abc", "unknown completion 'abc'"), ("=a b c", "'=' needs a letter"),
    ("a=b=c", "all completions tied"),
])
def test_parse_ranking_errors(answer, message):
    with pytest.raises(ValueError) as e:
        parse_ranking(answer, 3)
    assert message in str(e.value)


SAMPLES = [
    {"prompt": "Say hi.", "completions": ["Hi.", "Hello!", "Go away."]},
    {"prompt": [{"role": "user", "content": "Count to two."}], "completions": ["1 2", "one\ntwo", "1 2"]},
    {"prompt": "Say hi.", "completions": ["Hi.", "Hello!", "Go away."]},  # repeated
    {"prompt": "Say no.", "completions": ["No.", "No.", " "]},  # unrankable
    {"prompt": "Name a fruit.", "completions": ["Apple.", "Car.", "Pear.", "Banana."]},
]


@pytest.fixture
def samples_path(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    return path


def _scripted(answers):
    answers = iter(answers)

    def input_fn(question):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    return input_fn


def _records(path):
    return [r.record for r in read_jsonl("comparisons", path)]


def test_session_records_answers_and_reasks_invalid(samples_path, tmp_path):
    output, printed = tmp_path / "out" / "human.jsonl", []
    summary = labelers.label_session(samples_path, output, input_fn=_scripted(["b c", "b a c", "s", "a d c=b", "q"]),
                                     print_fn=lambda *a: printed.append(" ".join(map(str, a))))
    assert _records(output) == [
        {"prompt": "Say hi.", "completions": ["Hi.", "Hello!", "Go away."], "ranking": [1, 0, 2]},
        {"prompt": "Name a fruit.", "completions": ["Apple.", "Car.", "Pear.", "Banana."], "ranking": [0, 2, 2, 1]},
    ]
    assert summary == SessionSummary(total=3, answered_before=0, labelled=2, skipped=1, unrankable=1,
                                     repeated=1)
    text = "\n".join(printed)
    assert "Invalid answer 'b c': (a) not ranked" in text
    assert "(a) 1 2\n(b) one\n    two" in text  # duplicate completion left out, lines indented
    assert "[user] Count to two." in text and "2/3 labelled" in text and "1 skipped" in text


def test_session_resumes_and_asks_skipped_again(samples_path, tmp_path):
    output = tmp_path / "human.jsonl"
    labelers.label_session(samples_path, output, input_fn=_scripted(["a b c", "s"]), print_fn=lambda *a: None)
    assert len(_records(output)) == 1
    with output.open("ab") as f:  # a session killed in the middle of writing a line
        f.write(b'{"prompt": "Count')
    printed = []
    summary = labelers.label_session(samples_path, output, input_fn=_scripted(["b a", "d c b a"]),
                                     print_fn=printed.append)
    assert summary.answered_before == 1 and summary.labelled == 2
    assert [r["ranking"] for r in _records(output)] == [[0, 1, 2], [1, 0], [3, 2, 1, 0]]
    assert any("dropped an incomplete last line" in p for p in printed)
    summary = labelers.label_session(samples_path, output, input_fn=_scripted([]), print_fn=lambda *a: None)
    assert summary.answered_before == 3 and summary.labelled == 0


def test_bad_samples_name_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(SAMPLES[0]) + "\n" + json.dumps({"prompt": "x", "completions": "ab"}) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:2: field 'completions' must be a list of strings"):
        labelers.label_session(path, tmp_path / "out.jsonl", input_fn=_scripted([]), print_fn=lambda *a: None)


def _start(samples, output, log):
    return subprocess.Popen([sys.executable, str(LABEL_SCRIPT), f"--samples={samples}", f"--output={output}"],
                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True)


def _wait_for_lines(path, n, process, timeout_s=120.0):
    deadline = time.time() + timeout_s
    while not (path.exists() and path.read_text().count("\n") >= n):
        assert process.poll() is None and time.time() < deadline, "the session did not write its answer"
        time.sleep(0.05)


def test_label_script_killed_and_restarted(samples_path, tmp_path):
    output, log_path = tmp_path / "human.jsonl", tmp_path / "log.txt"
    with log_path.open("w") as log:
        process = _start(samples_path, output, log)
        for n, answer in enumerate(["a c b", "b a"], start=1):
            process.stdin.write(answer + "\n")
            process.stdin.flush()
            _wait_for_lines(output, n, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdin.close()
        process = _start(samples_path, output, log)
        process.communicate("x y\na b c d\n", timeout=120)
    assert process.returncode == 0, log_path.read_text()
    assert [r["ranking"] for r in _records(output)] == [[0, 2, 1], [1, 0], [0, 1, 2, 3]]
    text = log_path.read_text()
    assert "Invalid answer 'x y': unknown completion 'x'" in text
    assert "2/3 labelled" in text and "3/3 labelled" in text


@pytest.mark.parametrize("existing", [b"my notes, not JSONL\nsecond line", b'{"prompt": "a", "chosen": "x", "rejected": "y"}\n[]\n',
                                      b'{"prompt": "a", "chosen": "x", "rejected": "x"}\n{"prompt": "b'])
def test_invalid_output_is_refused_untouched(existing, samples_path, tmp_path):
    output = tmp_path / "notes.jsonl"
    output.write_bytes(existing)
    with pytest.raises(datasets.RecordError, match=rf"^{output}:[12]: "):
        labelers.label_session(samples_path, output, input_fn=_scripted(["a b c"]), print_fn=lambda *a: None)
    assert output.read_bytes() == existing


@pytest.mark.parametrize("line, message", [
    (b'{"prompt": [{"role": "bot", "content": "hi"}], "completions": ["a", "b"]}', "role must be one of"),
    (b'{"prompt": "caf\xe9", "completions": ["a", "b"]}', "not valid UTF-8"),
    (b'{"prompt": "a", "completions": ["a", "b"], "prompt": "b"}', "duplicate key 'prompt'"),
])
def test_bad_sample_is_refused_before_the_output_is_written(line, message, samples_path, tmp_path):
    samples_path.write_bytes(samples_path.read_bytes() + line + b"\n")
    output = tmp_path / "human.jsonl"
    with pytest.raises(datasets.RecordError, match=rf"^{samples_path}:{len(SAMPLES) + 1}: .*{message}"):
        labelers.label_session(samples_path, output, input_fn=_scripted(["a b c"]), print_fn=lambda *a: None)
    assert not output.exists()


def test_session_shows_the_output_file(samples_path, tmp_path):
    printed = []
    labelers.label_session(samples_path, tmp_path / "human.jsonl", input_fn=_scripted([]), print_fn=printed.append)
    assert f"Appending answers to {tmp_path / 'human.jsonl'}" in printed[0]
