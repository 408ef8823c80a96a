"""make_prompts: deterministic, held-out test topics, compatible constraints; records and quality."""

import itertools
import json

import pytest

from instructjax import tasks
from instructjax.tasks import constraints as C
from instructjax.tasks.instructions import TaskPrompt, read_records, write_records
from instructjax.tasks.quality import quality
from instructjax.tasks.topics import TOPICS, split_topics


def test_deterministic_and_counted():
    a = tasks.make_prompts("train", 50, seed=3)
    assert a == tasks.make_prompts("train", 50, seed=3)
    assert len(a) == 50 and len({p.prompt for p in a}) == 50
    assert a != tasks.make_prompts("train", 50, seed=4)
    assert a != tasks.make_prompts("validation", 50, seed=3)
    assert tasks.make_prompts("test", 0, seed=0) == []


def test_test_topics_are_held_out():
    assert len(TOPICS) >= 150 and len(set(TOPICS)) == len(TOPICS)
    test = set(split_topics("test"))
    assert test and not test & set(split_topics("train"))
    assert set(split_topics("train")) == set(split_topics("validation"))
    assert {p.topic for p in tasks.make_prompts("test", 200, seed=0)} <= test
    assert not {p.topic for p in tasks.make_prompts("train", 500, seed=0)} & test


def test_constraints_compatible_and_families_honoured():
    prompts = tasks.make_prompts("train", 500, seed=1)
    for p in prompts:
        assert 1 <= len(p.constraints) <= 2
        for a, b in itertools.combinations(p.constraints, 2):
            assert C.compatible(a, b), p.prompt
        assert p.prompt == " ".join([p.request, *(c.text for c in p.constraints)])
        assert p.topic in p.request
    assert {c.family for p in prompts for c in p.constraints} == set(C.FAMILIES)
    families = ("lowercase", "max_words")
    only = tasks.make_prompts("validation", 100, seed=0, families=families, max_constraints=1)
    assert all(len(p.constraints) == 1 and p.constraints[0].family in families for p in only)


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "dev"}, "unknown split"), ({"families": ("shouting",)}, "unknown: ['shouting']"),
    ({"max_constraints": 0}, "max_constraints"), ({"num": -1}, "num must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as e:
        tasks.make_prompts(**{"split": "train", "num": 3, "seed": 0, **kwargs})
    assert message in str(e.value)


def test_records_round_trip(tmp_path):
    prompts = tasks.make_prompts("test", 20, seed=0)
    path = tmp_path / "tasks.jsonl"
    write_records(path, prompts)
    assert read_records(path) == prompts
    assert set(json.loads(path.read_text().splitlines()[0])) == {"prompt", "topic", "constraints"}


def test_bad_records_name_file_and_line(tmp_path):
    good = tasks.make_prompts("train", 1, seed=0)[0].to_record()
    path = tmp_path / "tasks.jsonl"
    for line, message in [
        ("{", "malformed JSON"),
        (json.dumps({**good, "prompt": "Something else entirely."}), "request followed by the constraint texts"),
        (json.dumps({**good, "constraints": [{"family": "nope", "args": {}, "text": "x"}]}),
         "constraint 0: unknown constraint family 'nope'"),
        (json.dumps({"prompt": "x"}), "exactly 'prompt', 'topic', 'constraints'"),
    ]:
        path.write_text(json.dumps(good) + "\n\n" + line + "\n")
        with pytest.raises(ValueError) as e:
            read_records(path)
        assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value)


def test_quality():
    prompt = TaskPrompt.create("Give me some advice about growing tomatoes.", "growing tomatoes", ())
    good = "Plant tomato seedlings in a sunny spot, water them deeply and support the growing stems."
    off_topic = "Paris is the capital of France and it has many famous museums and wide avenues."
    repetitive = "tomatoes grow tomatoes grow tomatoes grow tomatoes grow tomatoes grow tomatoes grow"
    assert quality(prompt, "") == 0.0
    assert quality(prompt, good) == pytest.approx(1.0)
    assert 0 < quality(prompt, off_topic) < quality(prompt, good)
    assert 0 < quality(prompt, repetitive) < quality(prompt, good)
    assert quality(prompt, "Tomatoes.") < quality(prompt, good)
