"""Every constraint family accepts and rejects hand-written responses; JSON round trips; bad dicts."""

import itertools
import json
import random

import pytest

from instructjax.tasks import constraints as C

# family -> (arguments, responses that obey, responses that do not)
CASES = {
    C.MAX_WORDS: ({"n": 5}, ["One two three four five.", "Don't stop."], ["One two three four five six."]),
    C.MIN_WORDS: ({"n": 4}, ["Tea is very good."], ["Tea is good.", ""]),
    C.MAX_SENTENCES: ({"n": 2}, ["Tea is good. It is 3.5 euros!"], ["One. Two. Three.", "* a\n* b\n* c"]),
    C.MIN_SENTENCES: ({"n": 2}, ["Tea is good. I like it."], ["Tea is good.", "e.g"]),
    C.LOWERCASE: ({}, ["tea is good, really."], ["Tea is good.", "123"]),
    C.UPPERCASE: ({}, ["TEA IS GOOD!"], ["TEA is good.", "123"]),
    C.NO_COMMAS: ({}, ["Tea is good and hot."], ["Tea, coffee.", "  "]),
    C.END_PHRASE: ({"phrase": "Hope this helps!"}, ["Drink tea. Hope this helps!  \n"],
                   ["Drink tea. Hope this helps! Bye.", "Drink tea. hope this helps!"]),
    C.QUOTED: ({}, ['"Tea is good."', '  “Tea is good.”\n'], ['"Tea" is good.', '"']),
    C.INCLUDE_KEYWORDS: ({"words": ("tea", "daily")}, ["Drink TEA daily."],
                         ["Drink tea.", "Drink teapots daily."]),
    C.AVOID_WORDS: ({"words": ("very", "just")}, ["Tea is everything; justice."], ["Tea is Very good."]),
    C.BULLETS: ({"n": 2}, ["Two points:\n* one\n- two"], ["* one\n* two\n* three", "*one\n*two", "**a**\n**b**"]),
    C.TITLE: ({}, ["<<On Tea>>\nTea is good."], ["<<>> tea", "<< >>", "Tea."]),
    C.PARAGRAPHS: ({"n": 2}, ["Tea.\n***\nCoffee."],
                   ["Tea.\n***\n\n***\nCoffee.", "Tea.\n\nCoffee.", "Tea *** Coffee."]),
    C.JSON: ({}, ['{"tea": "good"}', '```json\n[1, 2]\n```', '```\n{"a": 1}\n```'],
             ['{"tea": good}', '"just a string"', 'Here: {"a": 1}']),
}


def test_cases_cover_every_family():
    assert set(CASES) == set(C.FAMILIES)


@pytest.mark.parametrize("family", C.FAMILIES)
def test_family_accepts_and_rejects(family):
    args, good, bad = CASES[family]
    constraint = C.make_constraint(family, **args)
    for response in good:
        assert constraint.check(response), response
    for response in bad:
        assert not constraint.check(response), response


@pytest.mark.parametrize("family", C.FAMILIES)
def test_dict_round_trip(family):
    constraint = C.sample_constraint(family, random.Random(0))
    assert constraint.text.strip()
    obj = json.loads(json.dumps(constraint.to_dict()))
    assert C.Constraint.from_dict(obj) == constraint
    hash(constraint)


GOOD = {"family": "max_words", "args": {"n": 20}, "text": "Answer in at most 20 words."}


@pytest.mark.parametrize("change, message", [
    ({"family": "max_wordz"}, "unknown constraint family 'max_wordz'"),
    ({"args": {"m": 3}}, "unexpected argument(s) ['m']"),
    ({"args": {}}, "missing argument(s) ['n']"),
    ({"args": {"n": "20"}}, "argument 'n' must be a positive integer"),
    ({"args": {"n": 0}}, "argument 'n' must be a positive integer"),
    ({"args": [20]}, "key 'args' must be an object"),
    ({"text": ""}, "key 'text' must be a non-empty string"),
    ({"extra": 1}, "exactly the keys"),
])
def test_bad_dicts_name_the_problem(change, message):
    with pytest.raises(ValueError) as e:
        C.Constraint.from_dict({**GOOD, **change})
    assert message in str(e.value)


def test_direct_construction_is_checked():
    with pytest.raises(ValueError, match="argument 'n' must be a positive integer"):
        C.Constraint("max_words", (("n", -1),), "Answer in at most -1 words.")
    with pytest.raises(ValueError, match="word lists as tuples"):
        C.Constraint("avoid_words", (("words", ["very"]),), "Avoid it.")


def test_bad_words_argument():
    bad = {"family": "avoid_words", "args": {"words": "very"}, "text": "Avoid it."}
    with pytest.raises(ValueError, match="argument 'words'"):
        C.Constraint.from_dict(bad)


def test_contradicting_pairs_are_incompatible():
    make = C.make_constraint
    assert not C.compatible(make("lowercase"), make("uppercase"))
    assert not C.compatible(make("quoted"), make("json"))
    assert not C.compatible(make("min_words", n=20), make("max_words", n=15))
    assert C.compatible(make("min_words", n=10), make("max_words", n=30))
    assert not C.compatible(make("max_sentences", n=1), make("bullets", n=3))
    assert not C.compatible(make("include_keywords", words=("time",)), make("avoid_words", words=("time", "very")))
    assert not C.compatible(make("max_words", n=15), make("max_words", n=30))
    assert C.compatible(make("title"), make("uppercase"))
    long_phrase = make("end_phrase", phrase="Let me know if you have any other questions.")
    assert not C.compatible(long_phrase, make("max_words", n=15))
    assert C.compatible(long_phrase, make("max_words", n=20))
    assert not C.compatible(make("end_phrase", phrase="Hope this helps, friend!"), make("no_commas"))
    assert not C.compatible(make("end_phrase", phrase="Hope this helps!"), make("avoid_words", words=("helps",)))


def test_sampled_compatible_pairs_are_satisfiable_in_principle():
    """Compatibility is symmetric and sampled arguments stay small enough for ~50 tokens."""
    rng = random.Random(0)
    sampled = [C.sample_constraint(f, rng) for f in C.FAMILIES for _ in range(5)]
    for a, b in itertools.product(sampled, repeat=2):
        assert C.compatible(a, b) == C.compatible(b, a)
    for c in sampled:
        if c.family in (C.MIN_WORDS, C.MIN_SENTENCES, C.BULLETS, C.PARAGRAPHS):
            assert c.arg("n") <= {C.MIN_WORDS: 20}.get(c.family, 3)


def test_counting_rules():
    assert C.count_words("It's a well-known fact: 3 cats.") == 7
    assert C.count_sentences("Hi there. Pi is 3.14! Really?\n* a bullet\n***") == 4


def test_spans_follow_the_counting_rules():
    text = "Hi there. Pi is 3.14! Really?\n* a bullet\n***\n  It's late"
    assert [text[s:e] for s, e in C.sentence_spans(text)] == ["Hi there.", "Pi is 3.14!", "Really?", "* a bullet",
                                                                "It's late"]
    assert [text[s:e] for s, e in C.word_spans(text)] == C.split_words(text)
    assert C.word_pattern("tea").findall("Tea, teapot, TEA-time") == ["Tea", "TEA"]
    assert C.TITLE_PATTERN.search("x <<On Tea>> y").group() == "<<On Tea>>"
