"""Reward functions: specs resolve (or fail naming the spec), one call per batch, and every broken
return value stops with an error naming the function, the index and the value."""

import math

import numpy as np
import pytest

from instructjax import rl
from instructjax.tasks import rewards as task_rewards
from instructjax.rl.reward_functions import NamedRewardFunction, call_reward_function, resolve_reward_functions

SPEC = f"{__name__}:letters"
CALLS = []


def letters(prompts, responses):
    CALLS.append((prompts, responses))
    return [sum(ch.isalpha() for ch in r) for r in responses]


def returns(value):
    return lambda prompts, responses: value


def raises(prompts, responses):
    raise KeyError("no grader for this prompt")


def three_args(prompts, responses, extra):
    return []


not_callable = 3.0


def test_specs_resolve_in_order_with_their_names():
    functions = resolve_reward_functions(f" {SPEC}, instructjax.tasks.rewards:constraint_fraction")
    assert [f.spec for f in functions] == [SPEC, "instructjax.tasks.rewards:constraint_fraction"]
    assert [f.name for f in functions] == ["letters", "constraint_fraction"]
    assert functions[1].fn is task_rewards.constraint_fraction


@pytest.mark.parametrize("spec, message", [
    ("letters", "expected 'package.module:name'"),
    (f"{__name__}:", "expected 'package.module:name'"),
    (f"{__name__}:a.b", "expected 'package.module:name'"),
    ("no_such_package.rewards:fn", "cannot import 'no_such_package.rewards'"),
    (f"{__name__}:missing", f"module '{__name__}' has no 'missing'"),
    (f"{__name__}:not_callable", "is a float, not callable"),
    (f"{__name__}:three_args", "cannot be called as fn\\(prompts, responses\\)"),
    (f"{SPEC},", "several separated by commas"),
    (f"{SPEC},{SPEC}", "the name\\(s\\) \\['letters'\\] occur twice"),
])
def test_bad_specs_name_the_spec(spec, message):
    with pytest.raises(rl.RewardFunctionError, match=message):
        resolve_reward_functions(spec)


def test_called_once_with_the_whole_batch():
    CALLS.clear()
    (function,) = resolve_reward_functions(SPEC)
    scores = call_reward_function(function, ("p1", "p2", "p3"), ("ab", "a1", ""))
    assert CALLS == [(["p1", "p2", "p3"], ["ab", "a1", ""])]
    assert scores.dtype == np.float32 and scores.tolist() == [2.0, 1.0, 0.0]


@pytest.mark.parametrize("value", [(1, 0.5, -2), np.array([1.0, 0.5, -2.0]), [np.float32(1), np.int64(0), 2.5],
                                   iter([1, 2, 3])])
def test_accepted_return_values(value):
    function = NamedRewardFunction("m:f", returns(value))
    assert call_reward_function(function, ["a", "b", "c"], ["x", "y", "z"]).shape == (3,)


@pytest.mark.parametrize("value, message", [
    ([1.0, 2.0], "m:f returned 2 scores for 3 responses"),
    (None, "m:f returned a NoneType, not a sequence of numbers"),
    (0.5, "m:f returned a float, not a sequence of numbers"),
    ([1.0, "2", 3.0], "m:f: score 1 is '2' \\(str\\), not a real number"),
    ([1.0, 2.0, None], "m:f: score 2 is None"),
    ([True, 0.0, 1.0], "m:f: score 0 is True \\(bool\\), not a real number"),
    ([1.0, np.bool_(False), 1.0], "m:f: score 1 is .*False"),
    ([1.0, [2.0], 3.0], "m:f: score 1 is \\[2.0\\]"),
    ([1.0, 2.0, 1j], "m:f: score 2 is 1j"),
    ([1.0, math.nan, 3.0], "m:f: score 1 is nan, not finite"),
    ([-math.inf, 2.0, 3.0], "m:f: score 0 is -inf, not finite"),
    ([1.0, 2.0, 1e39], "m:f: score 2 is 1e\\+39, not finite in float32"),
])
def test_broken_return_values_name_the_function_index_and_value(value, message):
    function = NamedRewardFunction("m:f", returns(value))
    with pytest.raises(rl.RewardFunctionError, match=message):
        call_reward_function(function, ["a", "b", "c"], ["x", "y", "z"])


def test_a_raising_function_is_named_and_chained():
    function = NamedRewardFunction(f"{__name__}:raises", raises)
    with pytest.raises(rl.RewardFunctionError, match=f"{__name__}:raises raised KeyError: 'no grader") as info:
        call_reward_function(function, ["a"], ["x"])
    assert isinstance(info.value.__cause__, KeyError)
