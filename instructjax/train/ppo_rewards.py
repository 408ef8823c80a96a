"""PPO's reward as `config.reward` asks for it: a source computed in the scorer's jit (a reward model,
or the synthetic "random" and "token_count" rewards), reward functions called on the host, or a
weighted sum of a reward model and functions.

    sources = reward_sources(config.reward)            # resolved and checked before the run starts
    scorer = FunctionScorer(sources.functions, tokenizer, prompt_source)
    function_scores = scorer(sample_output, batch["prompts"]["index"])   # float32 [F, B], every process
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from instructjax import parallel, sampling
from instructjax.data import prompt_texts
from instructjax.data.render import response_texts
from instructjax.rl.reward_functions import NamedRewardFunction, call_reward_function, resolve_reward_functions
from instructjax.tokenizers import Tokenizer

SOURCES = ("model", "function", "model+function", "random", "token_count")


@dataclasses.dataclass(frozen=True)
class RewardSources:
    """The sources of the reward, in order (the in-graph one first, then the functions), and their weights."""

    in_graph: Optional[str]  # "model", "random", "token_count"; None: reward functions alone
    functions: tuple[NamedRewardFunction, ...]  # called on the host, in this order
    weights: tuple[float, ...]  # one per source

    @property
    def names(self) -> tuple[str, ...]:
        """One per source: its metric is `score/<name>`."""
        return (() if self.in_graph is None else (self.in_graph,)) + tuple(f.name for f in self.functions)

    @property
    def has_reward_model(self) -> bool:
        """Whether the in-graph source is a reward model (loaded, or random); not a token count or functions alone."""
        return self.in_graph in ("model", "random")


def uses_model(source: str) -> bool:
    """Whether `reward.source` reads a reward model from `reward.path`."""
    return source in ("model", "model+function")


def reward_sources(reward: ml_collections.ConfigDict) -> RewardSources:
    """The sources of `config.reward`; a ValueError naming the field when the source is unknown, a
    function spec does not resolve, or the weights do not match the sources."""
    if reward.source not in SOURCES:
        raise ValueError(f"reward.source={reward.source!r}: expected one of {SOURCES}")
    calls_functions = reward.source in ("function", "model+function")
    if calls_functions and not reward.function:
        raise ValueError(f"reward.source={reward.source!r} needs reward.function ('package.module:name', several "
                         "separated by commas)")
    if reward.function and not calls_functions:
        raise ValueError(f"reward.function={reward.function!r} is set but reward.source={reward.source!r} calls no "
                         "function: use 'function' or 'model+function'")
    if uses_model(reward.source) and not reward.path:
        raise ValueError(f"reward.source={reward.source!r} needs reward.path (a reward workdir or an exported reward "
                         "model)")
    if reward.path and not uses_model(reward.source):
        logging.warning("reward.path=%r is not read: reward.source=%r uses no reward model", reward.path,
                        reward.source)
    in_graph = None if reward.source == "function" else reward.source.partition("+")[0]
    functions = resolve_reward_functions(reward.function) if calls_functions else ()
    count = int(in_graph is not None) + len(functions)
    bad = [w for w in reward.weights if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w)]
    if bad:
        raise ValueError(f"reward.weights={tuple(reward.weights)}: {bad[0]!r} is not a finite number")
    weights = tuple(float(w) for w in reward.weights) or (1.0,) * count
    if len(weights) != count:
        names = RewardSources(in_graph, functions, weights).names
        raise ValueError(f"reward.weights={tuple(reward.weights)}: expected {count} weights, one per reward source "
                         f"{names}, or () for all 1.0")
    return RewardSources(in_graph, functions, weights)


def source_metrics(names: Sequence[str], source_scores: jax.Array) -> dict[str, jax.Array]:
    """`score/<name>`: each source's mean score over the batch, unweighted (`Rollout.source_scores` [B, S])."""
    means = source_scores.mean(axis=0)
    return {f"score/{name}": means[i] for i, name in enumerate(names)}


class FunctionScorer:
    """The reward functions' scores of a rollout batch, float32 [F, B], computed on the host.

    Every process fetches the batch's responses and prompt indices (global arrays); process 0
    decodes the responses, looks the prompts up in the prompt source, calls each function ONCE with
    the whole batch and broadcasts the scores, so that every process uses the same rewards and a
    function (an API call, a sandbox) runs once per batch.
    """

    def __init__(self, functions: Sequence[NamedRewardFunction], tokenizer: Tokenizer, prompt_source: Any):
        self.functions, self.tokenizer, self.prompt_source = tuple(functions), tokenizer, prompt_source

    def __call__(self, out: sampling.SampleOutput, indices: jax.Array) -> np.ndarray:
        tokens, mask, indices = (np.asarray(x) for x in parallel.host_values((out.tokens, out.mask, indices)))

        def compute() -> np.ndarray:
            prompts = prompt_texts(self.prompt_source, indices)
            responses = response_texts(self.tokenizer, tokens, mask)
            return np.stack([call_reward_function(f, prompts, responses) for f in self.functions])

        return on_process_zero(compute, (len(self.functions), len(indices)))


def on_process_zero(compute: Callable[[], np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """`compute()` run on process 0 and broadcast to every process; when it raises there, every process
    stops (the others with a RuntimeError pointing to process 0's log)."""
    if jax.process_count() == 1:
        return compute()
    result, error = np.zeros(shape, np.float32), None
    if jax.process_index() == 0:
        try:
            result = compute()
        except Exception as e:  # re-raised below, after the others have heard of it
            error = e
    failed, result = multihost_utils.broadcast_one_to_all((np.asarray(error is not None), result))
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("a reward function failed on process 0: see its log")
    return result
