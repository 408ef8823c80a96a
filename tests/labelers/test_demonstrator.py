"""The demonstrator: on seeded random samples, every edit of every family and of every pair of
families that prompt generation draws meets all constraints (by their own checks) and stays close
to the sample; cut-off samples, the order of interacting edits, and the None path."""

import collections
import json
import random

import pytest

from instructjax import labelers, tasks
from instructjax.labelers import ConstraintDemonstrator, closeness
from instructjax.labelers.demonstrator import MIN_CLOSENESS
from instructjax.tasks.constraints import make_constraint
from instructjax.tasks.instructions import TaskPrompt
from instructjax.tasks.constraints import CONFLICTING_FAMILIES, sample_constraint, split_words

MEAN_CLOSENESS = 0.9  # the edits of a family (or pair) keep on average at least this share of words
PAIR_FAILURES = 0.01  # share of the pair edits allowed to return None (too little left to keep)
VOCABULARY = (
    "the a of to and in is it that for on with as was are be this have from or one had by but not what all were "
    "we when your can there an each which she do how their if will up other about out then them so some her would "
    "make like him into has look two more write go see number no way could my than first water been call who oil "
    "its now find long down day did get come made may part tomato garden sun soil plant grow very really just also "
    "great many basically actually simple example people future practice history daily together world reason idea "
    "time Paris London Monday NASA I I'm don't it's 3 1,000 2024 e-mail well-known").split()
TOMATOES = ("Give me some advice about growing tomatoes.", "growing tomatoes")


def random_sentence(rng: random.Random) -> str:
    """1 to 14 random words: a capital first, some words in capitals, some commas, maybe a quote."""
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(1, 14))]
    words = [words[0][:1].upper() + words[0][1:]] + [w.upper() if rng.random() < 0.05 else w for w in words[1:]]
    words = [w + "," if i < len(words) - 1 and rng.random() < 0.12 else w for i, w in enumerate(words)]
    if len(words) > 2 and rng.random() < 0.15:
        i = rng.randrange(len(words) - 1)
        j = rng.randrange(i + 1, len(words))
        words[i], words[j] = '"' + words[i], words[j].rstrip(",") + '"'
    return " ".join(words)


def random_sample(rng: random.Random) -> tuple[str, bool]:
    """(text, finished): 1 to 6 sentences joined by spaces or line breaks; about a third cut off in
    the middle of a last sentence, as a sample that hit the token budget."""
    parts = []
    for _ in range(rng.randint(1, 6)):
        parts += [random_sentence(rng) + rng.choice(".....!?"), rng.choice((" ", " ", "  ", "\n", "\n\n"))]
    finished = rng.random() > 0.3
    if not finished:
        parts.append(random_sentence(rng))
    return "".join(parts).strip(), finished


def edit_many(prompts: list[TaskPrompt], samples_per_prompt: int, seed: int) -> tuple[list[float], int]:
    """Edits random samples for each prompt; asserts every answer meets every constraint and keeps
    at least MIN_CLOSENESS; returns the closeness of each answer and the number of None."""
    rng, demonstrator = random.Random(seed), ConstraintDemonstrator()
    kept, failed = [], 0
    for prompt in prompts:
        for _ in range(samples_per_prompt):
            sample, finished = random_sample(rng)
            answer = demonstrator.edit(prompt, sample, finished=finished)
            if answer is None:
                failed += 1
                continue
            broken = [c.family for c in prompt.constraints if not c.check(answer)]
            assert not broken, (prompt.prompt, sample, answer, broken)
            kept.append(closeness(sample, answer))
            assert kept[-1] >= MIN_CLOSENESS, (prompt.prompt, sample, answer)
    return kept, failed


@pytest.mark.parametrize("family", tasks.FAMILIES)
def test_each_family_on_random_samples(family):
    prompts = tasks.make_prompts("train", 20, seed=0, families=(family,), max_constraints=1)
    kept, failed = edit_many(prompts, samples_per_prompt=15, seed=tasks.FAMILIES.index(family))
    assert failed == 0
    assert sum(kept) / len(kept) >= MEAN_CLOSENESS


def test_every_pair_that_prompt_generation_draws():
    by_pair = collections.defaultdict(list)
    for prompt in tasks.make_prompts("train", 3000, seed=0):
        if len(prompt.constraints) == 2:
            by_pair[frozenset(c.family for c in prompt.constraints)].append(prompt)
    every_pair = {frozenset((a, b)) for i, a in enumerate(tasks.FAMILIES) for b in tasks.FAMILIES[i + 1:]}
    assert set(by_pair) == every_pair - CONFLICTING_FAMILIES  # 95 pairs
    kept, failed = edit_many([p for prompts in by_pair.values() for p in prompts[:4]], samples_per_prompt=8, seed=1)
    assert failed <= PAIR_FAILURES * (len(kept) + failed)
    assert sum(kept) / len(kept) >= MEAN_CLOSENESS


def _edit(constraints, sample, finished=True, **kwargs):
    prompt = TaskPrompt.create(*TOMATOES, [make_constraint(family, **args) for family, args in constraints])
    return ConstraintDemonstrator(**kwargs).edit(prompt, sample, finished=finished)


SAMPLE = 'Tomatoes need full sun, warm soil and regular watering. Really, they are very easy to grow! Pick them red.'


@pytest.mark.parametrize("constraints, answer", [
    ([("lowercase", {})], SAMPLE.lower()),
    ([("quoted", {})], '"Tomatoes need full sun, warm soil and regular watering. Really, they are very easy to grow! '
                       'Pick them red."'),
    ([("no_commas", {})], "Tomatoes need full sun warm soil and regular watering. Really they are very easy to grow! "
                          "Pick them red."),
    ([("avoid_words", {"words": ("really", "very")})],  # a sentence that began with "Really" keeps a capital
     "Tomatoes need full sun, warm soil and regular watering. They are easy to grow! Pick them red."),
    ([("max_words", {"n": 15})], "Tomatoes need full sun, warm soil and regular watering."),
    ([("max_sentences", {"n": 2})], "Tomatoes need full sun, warm soil and regular watering. Really, they are very "
                                    "easy to grow!"),
    ([("end_phrase", {"phrase": "Hope this helps!"})], SAMPLE + " Hope this helps!"),
    ([("include_keywords", {"words": ("time", "sun")})], SAMPLE + " In a word: time."),
    ([("title", {}), ("uppercase", {})], "<<GROWING TOMATOES>>\n" + SAMPLE.upper()),  # the title is uppercased too
    # under a sentence limit the title opens the first sentence instead of a line (a sentence) of its own
    ([("title", {}), ("max_sentences", {"n": 1})],
     "<<Growing Tomatoes>> Tomatoes need full sun, warm soil and regular watering."),
    ([("bullets", {"n": 2})], "* Tomatoes need full sun, warm soil and regular watering. Really, they are very easy "
                              "to grow!\n* Pick them red."),
    ([("json", {}), ("uppercase", {})], json.dumps({"ANSWER": SAMPLE.upper()})),
    # the end phrase counts against the word limit: the cut leaves room for it
    ([("max_words", {"n": 20}), ("end_phrase", {"phrase": "Let me know if you have any other questions."})],
     "Tomatoes need full sun, warm soil and regular watering. Let me know if you have any other questions."),
    # words missing under a sentence limit: the cut sentences come back joined, then a topic clause
    ([("max_sentences", {"n": 1}), ("min_words", {"n": 20})],
     "Tomatoes need full sun, warm soil and regular watering; really, they are very easy to grow; pick them red "
     "and it helps to ask questions about growing tomatoes."),
    # an added sentence obeys no_commas too
    ([("no_commas", {}), ("min_words", {"n": 25})], "Tomatoes need full sun warm soil and regular watering. Really "
     "they are very easy to grow! Pick them red. Reading about growing tomatoes is a good start."),
])
def test_edits_and_their_order(constraints, answer):
    assert _edit(constraints, SAMPLE) == answer


def test_a_word_limit_cuts_at_a_clause_when_the_first_sentence_keeps_too_little():
    sample = "Tea is good. It is hot, sweet and cheap, and people all over the world drink it daily."
    assert _edit([("max_words", {"n": 10})], sample) == "Tea is good. It is hot, sweet and cheap."
    assert _edit([("max_words", {"n": 5})], sample) == "Tea is good."  # 3 of at most 5 words: the sentence


def test_added_sentences_avoid_the_forbidden_words_of_the_topic():
    prompt = TaskPrompt.create("Tell me about the Great Wall of China.", "the Great Wall of China",
                               [make_constraint("avoid_words", words=("great",)), make_constraint("min_words", n=10)])
    assert ConstraintDemonstrator().edit(prompt, "It is a great wall.") == \
        "It is a wall. Learning about the Wall of China pays off."


def test_the_end_phrase_ends_the_answer_once():
    sample = "Tomatoes need sun. Hope this helps! Ask me more."
    assert _edit([("end_phrase", {"phrase": "Hope this helps!"})], sample) == "Tomatoes need sun. Hope this helps!"


def test_topic_sentences_fit_every_family():
    rng = random.Random(0)
    avoided = {w for _ in range(100) for w in sample_constraint("avoid_words", rng).arg("words")}
    for sentence in labelers.demonstrator.TOPIC_SENTENCES:
        assert "," not in sentence and not avoided & set(split_words(sentence))
        assert len(split_words(sentence.format(topic=""))) <= 6  # one fits between min and max words


def test_a_sample_meeting_every_constraint_comes_back_as_it_is():
    assert _edit([("max_words", {"n": 30}), ("title", {})], "<<Tomatoes>> Grow them in the sun.\n") == \
        "<<Tomatoes>> Grow them in the sun."


def test_a_cut_off_sample_loses_its_unfinished_sentence():
    sample = "Tomatoes need full sun. Water them every morning and keep the"
    assert _edit([("lowercase", {})], sample, finished=False) == "tomatoes need full sun."
    assert _edit([("lowercase", {})], sample, finished=True) == sample.lower()  # a finished sample is kept whole
    # with nothing left before it, the unfinished sentence is closed instead (dangling "the" dropped)
    assert _edit([("lowercase", {})], "Water them every morning and keep the", finished=False) == \
        "water them every morning and keep."
    # also when the cut-back sample would need more filler than it keeps
    assert _edit([("min_words", {"n": 10})], "Tomatoes. Water them every morning and keep the soil moist in",
                 finished=False) == "Tomatoes. Water them every morning and keep the soil moist."


def test_a_bare_opening_gives_way_to_the_next_sentence():
    sample = "Sure! Tomatoes need full sun and warm soil. Water them often."
    assert _edit([("max_sentences", {"n": 1})], sample) == "Tomatoes need full sun and warm soil."


def test_none_when_the_constraints_cannot_be_met_close_to_the_sample():
    assert _edit([("lowercase", {})], "") is None
    assert _edit([("lowercase", {})], " ... ") is None
    # nothing is left once the forbidden words go: the answer would be all filler
    assert _edit([("avoid_words", {"words": ("very", "really")})], "Really, very very.") is None
    assert _edit([("lowercase", {}), ("uppercase", {})], SAMPLE) is None  # contradictory
    # the long end phrase takes half of the word budget: too far from the sample for min_closeness=0.9
    phrase = [("max_words", {"n": 20}), ("end_phrase", {"phrase": "Let me know if you have any other questions."})]
    assert _edit(phrase, SAMPLE, min_closeness=0.9) is None
    with pytest.raises(ValueError, match="min_closeness must be in"):
        ConstraintDemonstrator(min_closeness=1.5)


def test_closeness():
    assert closeness("Tomatoes need sun.", "tomatoes NEED sun!") == 1.0
    assert closeness("Tomatoes need sun.", "Tomatoes need sun. Water them.") == 1.0  # only added
    assert closeness("Tomatoes need sun. Water them.", "Tomatoes need sun.") == 1.0  # only cut
    assert closeness("Tomatoes need sun.", "Tomatoes want sun.") == pytest.approx(2 / 3)
    assert closeness("Tomatoes need sun.", "Paris is lovely.") == 0.0
    assert closeness("", "Tomatoes.") == 0.0
