"""Reward functions: Python callables that score decoded responses on the host (verifiable rewards,
like TRL's `reward_funcs`), named "package.module:name" on the command line.

    functions = resolve_reward_functions("instructjax.tasks.rewards:constraint_fraction")
    scores = call_reward_function(functions[0], prompts, responses)   # float32 [B]

A reward function is `fn(prompts: list[str], responses: list[str]) -> Sequence[float]`: one score
per response, a real number (not a bool, not NaN or inf). Every way of breaking that raises a
`RewardFunctionError` naming the function, and the offending index and value.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Sequence

import numpy as np

RewardFunction = Callable[[list[str], list[str]], Sequence[float]]


class RewardFunctionError(ValueError):
    """A reward function that cannot be found, or that broke its contract on a batch."""


@dataclasses.dataclass(frozen=True)
class NamedRewardFunction:
    """A reward function and the spec it was found by."""

    spec: str  # "package.module:name"
    fn: RewardFunction

    @property
    def name(self) -> str:
        """The name after the colon: the function's metric is `score/<name>`."""
        return self.spec.partition(":")[2]


def resolve_reward_functions(specs: str) -> tuple[NamedRewardFunction, ...]:
    """The functions of `specs`, "package.module:name" or several separated by commas (distinct names)."""
    parts = [part.strip() for part in specs.split(",")]
    if not all(parts):
        raise RewardFunctionError(f"reward functions {specs!r}: expected 'package.module:name', several separated "
                                  "by commas")
    functions = tuple(resolve_reward_function(part) for part in parts)
    names = [f.name for f in functions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise RewardFunctionError(f"reward functions {specs!r}: the name(s) {repeated} occur twice; each function's "
                                  "metric is score/<name>, so the names must differ")
    return functions


def resolve_reward_function(spec: str) -> NamedRewardFunction:
    """The callable `name` of module `package.module`, checked to take (prompts, responses)."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name.isidentifier():
        raise RewardFunctionError(f"reward function {spec!r}: expected 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardFunctionError(f"reward function {spec!r}: cannot import {module_name!r}: {e}") from e
    if not hasattr(module, name):
        raise RewardFunctionError(f"reward function {spec!r}: module {module_name!r} has no {name!r}")
    fn = getattr(module, name)
    if not callable(fn):
        raise RewardFunctionError(f"reward function {spec!r} is a {type(fn).__name__}, not callable")
    try:
        signature = inspect.signature(fn)
    except ValueError:  # some builtins have none: the first call checks the function
        signature = None
    if signature is not None:
        try:
            signature.bind([], [])
        except TypeError as e:
            raise RewardFunctionError(f"reward function {spec!r}{signature} cannot be called as "
                                      f"fn(prompts, responses): {e}") from None
    return NamedRewardFunction(spec, fn)


def call_reward_function(function: NamedRewardFunction, prompts: Sequence[str],
                         responses: Sequence[str]) -> np.ndarray:
    """float32 [B]: `function`'s scores of B (prompt, response) pairs, called once with the whole batch."""
    spec, count = function.spec, len(responses)
    if len(prompts) != count:
        raise ValueError(f"reward function {spec}: {len(prompts)} prompts for {count} responses")
    try:
        returned = function.fn(list(prompts), list(responses))
    except Exception as e:
        raise RewardFunctionError(f"reward function {spec} raised {type(e).__name__}: {e}") from e
    try:
        values = list(returned)
    except TypeError:
        raise RewardFunctionError(f"reward function {spec} returned a {type(returned).__name__}, not a sequence of "
                                  "numbers") from None
    if len(values) != count:
        raise RewardFunctionError(f"reward function {spec} returned {len(values)} scores for {count} responses")
    scores = np.zeros(count, np.float32)
    for i, value in enumerate(values):
        array = np.asarray(value)
        if array.ndim or array.dtype.kind not in "iuf":
            raise RewardFunctionError(f"reward function {spec}: score {i} is {value!r} ({type(value).__name__}), "
                                      "not a real number")
        with np.errstate(over="ignore"):  # too large for float32: inf, reported below
            scores[i] = array
        if not np.isfinite(scores[i]):
            raise RewardFunctionError(f"reward function {spec}: score {i} is {value!r}, not finite in float32")
    return scores
