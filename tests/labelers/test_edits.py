"""The demonstrator's text edits, each on hand-written texts with its exact result."""

import json

import pytest

from instructjax.labelers import edits
from instructjax.tasks.constraints import count_sentences, make_constraint


@pytest.mark.parametrize("text, closed", [
    ("Tea is good.", "Tea is good."),
    ('He said "tea is good."', 'He said "tea is good."'),
    ("Tea is good and", "Tea is good."),  # dangling conjunction
    ("Tea is good, and the", "Tea is good."),
    ('He said "tea is', 'He said "tea."'),  # open quote closed, dangling "is" dropped
    ("Tea (served hot", "Tea (served hot)."),
    ("Tea is good. And the", "Tea is good. And."),  # never past the last sentence's first word
    (" , ", ""),
])
def test_close_sentence(text, closed):
    assert edits.close_sentence(text) == closed


@pytest.mark.parametrize("text, kept", [
    ("Tea is good. It is hot", "Tea is good."),
    ("Tea is good. It is hot.", "Tea is good. It is hot."),
    ("Tea is good!\n* hot\n* sweet and", "Tea is good!\n* hot"),
    ("* hot\n", "* hot"),  # a line break ends the last sentence
    ("Tea is good", ""),
])
def test_cut_unfinished(text, kept):
    assert edits.cut_unfinished(text) == kept


def test_cut_candidates_end_cleanly_longest_first():
    text = "Sure! Tea is good, and hot.\n1. Brew it for the\n2. Drink"
    cuts = {kind: [cut for cut, _ in candidates] for kind, candidates in edits.cut_candidates(text).items()}
    # closed with a period, dangling words dropped, no cut ending on a list number ("1.")
    assert cuts == {
        "sentence": ["Sure! Tea is good, and hot.\n1. Brew it for the\n2. Drink.",
                     "Sure! Tea is good, and hot.\n1. Brew it.", "Sure! Tea is good, and hot.", "Sure!"],
        "clause": ["Sure! Tea is good."],
        "word": ["Sure! Tea is good, and hot.\n1. Brew it for the\n2. Drink.",
                 "Sure! Tea is good, and hot.\n1. Brew it.", "Sure! Tea is good, and hot.\n1. Brew.",
                 "Sure! Tea is good, and hot.", "Sure! Tea is good.", "Sure! Tea.", "Sure."],
    }
    ends = dict(edits.cut_candidates(text)["sentence"])
    assert text[:ends["Sure! Tea is good, and hot."]] == "Sure! Tea is good, and hot."
    windows = [window for window, _ in edits.sentence_windows(text)]
    assert windows[:2] == ["Tea is good, and hot.\n1. Brew it for the\n2. Drink.", "Tea is good, and hot.\n1. Brew it."]
    assert "Sure!" not in " ".join(windows) and len(windows) == 9


@pytest.mark.parametrize("text, words, removed", [
    ("Tea is very good.", ("very",), "Tea is good."),
    ("Really, tea is VERY good.", ("very", "really"), "Tea is good."),
    ("It was, basically, fine. Just drink it!", ("basically", "just"), "It was fine. Drink it!"),
    ("I like it, really.", ("really",), "I like it."),
    ("Really? Yes. Very-good tea.", ("really", "very"), "Yes. Good tea."),
    ("Veryfine tea, justice.", ("very", "just"), "Veryfine tea, justice."),  # whole words only: unchanged
])
def test_remove_words(text, words, removed):
    assert edits.remove_words(text, words) == removed
    assert make_constraint("avoid_words", words=words).check(removed)


def test_remove_commas_glues_no_words():
    assert edits.remove_commas("Tea, coffee,milk and 1,000 cups,\nall hot.") == "Tea coffee milk and 1000 cups\nall hot."
    assert edits.remove_commas("No commas  here.") == "No commas  here."  # unchanged, spaces too


def test_append_and_join():
    assert edits.append_sentence("Tea is good", "Drink it.") == "Tea is good. Drink it."
    assert edits.append_sentence("Tips:\n* tea", "Drink it.") == "Tips:\n* tea\nDrink it."  # after a list item
    assert edits.append_sentence("", "Drink it.") == "Drink it."
    assert edits.append_clause("Tea is good!", "and hot") == "Tea is good and hot!"
    assert edits.join_sentence("Tea is good.", "It is hot.") == "Tea is good; it is hot."
    assert edits.join_sentence("Tea is good.", "I like it.") == "Tea is good; I like it."
    assert edits.join_sentence("Tea is good.", "NASA likes it.") == "Tea is good; NASA likes it."
    assert edits.join_sentence("Is tea good?", "It is.") is None


@pytest.mark.parametrize("bullets, paragraphs, laid_out", [
    (2, None, "* One. Two.\n* Three."),
    (None, 2, "One. Two.\n***\nThree."),
    (2, 2, "One.\n***\n* Two.\n* Three."),  # the bullets make up the last paragraph
    (4, None, "1. One\n- Two.\nThree."),  # too few sentences: unchanged
])
def test_reflow(bullets, paragraphs, laid_out):
    assert edits.reflow("1. One\n- Two.\nThree.", bullets, paragraphs) == laid_out


def test_wraps():
    wrapped = edits.wrap_json('Tea "hot",\n\tgood\x07 \\ tea')
    assert json.loads(wrapped) == {"answer": 'Tea "hot", good \\ tea'}
    assert json.loads(wrapped.upper()) == {"ANSWER": 'TEA "HOT", GOOD \\ TEA'}  # a change of case keeps it JSON
    assert edits.wrap_quotes('Tea is "good".') == '"Tea is \'good\'."'
    assert edits.wrap_quotes("* tea\n* coffee") == '"\n* tea\n* coffee\n"'
    assert count_sentences(edits.wrap_quotes("* tea\n* coffee")) == 2
    assert edits.title_case("the Great Wall of China") == "The Great Wall of China"
