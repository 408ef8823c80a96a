"""Constraints read back from prompt texts (every family and argument choice), and the task's
checker as reward functions on hand-made prompts and responses."""

import itertools

import pytest

from instructjax import tasks
from instructjax.tasks import constraints as C
from instructjax.tasks.instructions import SPLITS, compose_prompt
from instructjax.tasks.rewards import all_constraints, constraint_fraction


def every_choice(family):
    """Every constraint of `family` the prompt sampler can draw, plus arguments outside its choices."""
    (name,) = C._ARGS[family] or (None,)
    if name is None:
        return [C.make_constraint(family)]
    if name == "words":
        words = C._CHOICES[family]
        chosen = [(w,) for w in words] + list(itertools.permutations(words, 2)) + [("tea", "green tea", "x")]
        return [C.make_constraint(family, words=w) for w in chosen]
    if name == "phrase":
        return [C.make_constraint(family, phrase=p) for p in C._CHOICES[family] + ('Say "bye".', "Thanks, 1 and 2.")]
    return [C.make_constraint(family, n=n) for n in sorted({1, 7, 100, *C._CHOICES[family]})]


@pytest.mark.parametrize("family", C.FAMILIES)
def test_every_sentence_parses_back_to_its_constraint(family):
    choices = every_choice(family)
    assert len(choices) > 1 or not C._ARGS[family]
    for constraint in choices:
        assert C.parse_constraint(constraint.text) == constraint
        # at the end of a prompt, alone and after another constraint
        assert tasks.constraints_of_prompt(f"Tell me about tea. {constraint.text}") == (constraint,)
        other = C.make_constraint(C.NO_COMMAS if family != C.NO_COMMAS else C.TITLE)
        prompt = compose_prompt("Tell me about tea.", [other, constraint])
        assert tasks.constraints_of_prompt(prompt) == (other, constraint)


def test_sampled_task_prompts_parse_back():
    for split in SPLITS:
        for prompt in tasks.make_prompts(split, 300, seed=1):
            assert tasks.constraints_of_prompt(prompt.prompt) == prompt.constraints


@pytest.mark.parametrize("sentence", [
    "Answer in at most 1 sentences.",  # the plural of another n
    "Answer in at most 0 words.",  # not a valid argument
    "Answer in at most 20 words",  # no full stop
    "answer in at most 20 words.",
    'Include the keywords "tea" in your answer.',  # one word, plural form
    'Do not use the words "very" and "just" in your answer.',  # the other family's conjunction
    "End your answer with the exact phrase  and nothing after it.",
])
def test_near_misses_are_not_constraints(sentence):
    assert C.parse_constraint(sentence) is None


def test_a_prompt_without_constraints_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'What is the capital of France\\?' does not end with a constraint"):
        tasks.constraints_of_prompt("What is the capital of France?")
    with pytest.raises(ValueError, match="does not end with a constraint"):  # a constraint not at the end
        tasks.constraints_of_prompt("Answer in at most 5 words. What is tea?")


def test_ready_reward_functions_check_the_constraints_of_each_prompt():
    both = compose_prompt("Describe tea.", [C.make_constraint(C.MAX_WORDS, n=5),
                                            C.make_constraint(C.LOWERCASE)])
    one = compose_prompt("Describe tea.", [C.make_constraint(C.END_PHRASE, phrase="Hope this helps!")])
    prompts = [both, both, both, one, one]
    responses = ["tea is a drink.", "Tea is a drink.", "tea is a hot drink from leaves.", "Tea. Hope this helps!",
                 "Hope this helps! Tea."]
    assert constraint_fraction(prompts, responses) == [1.0, 0.5, 0.5, 1.0, 0.0]
    assert all_constraints(prompts, responses) == [1.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 prompts for 1 responses"):
        constraint_fraction([one, one], ["x"])
    with pytest.raises(ValueError, match="'Describe tea.' does not end with a constraint"):
        all_constraints([one, "Describe tea."], ["x", "y"])
