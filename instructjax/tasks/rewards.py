"""The default task's checker as PPO reward functions (verifiable rewards, no reward model):

    --config.reward.source=function --config.reward.function=instructjax.tasks.rewards:constraint_fraction

A reward function gets only the prompt texts, so each prompt's constraints are read back from its
sentences (`constraints_of_prompt`); a prompt without one stops the run with an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from instructjax.tasks.constraints import constraints_of_prompt


def constraint_fraction(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Per response: the fraction of its prompt's constraints it meets, in [0, 1]."""
    return [sum(met) / len(met) for met in _checks(prompts, responses)]


def all_constraints(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Per response: 1.0 when it meets every constraint of its prompt, else 0.0."""
    return [float(all(met)) for met in _checks(prompts, responses)]


def _checks(prompts: Sequence[str], responses: Sequence[str]) -> list[list[bool]]:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    return [[c.check(response) for c in constraints_of_prompt(prompt)] for prompt, response in zip(prompts, responses)]
