"""A rollout batch: sampled responses (`instructjax.rl.sampler`) assembled with their prompts and scored
in one compiled function, reference logprobs and the reward (docs/formulas.md#no-eos-penalty); a pytree of arrays.

    out = sample_responses(policy_cfg, policy_params, prompts, prompt_mask, rng=..., settings=...)
    batch = make_scorer(...)(ref_params, reward_params, out)   # a `Rollout`

The reward is one source computed in the scorer (a reward model, `reward_fn`), the scores of reward
functions computed on the host between sampling and scoring (`function_scores`), or a weighted sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from instructjax import sampling
from instructjax.models import ModelConfig
from instructjax.rl.forwards import response_logprobs
from instructjax.rl.in_graph_rewards import RewardFn
from instructjax.rl.per_token_rewards import no_eos_penalty


@flax.struct.dataclass
class Rollout:
    """One batch of episodes: prompt (left-padded) + response (right-padded) rows."""

    tokens: jax.Array  # int32 [B, P + N]: prompt then response tokens
    attention_mask: jax.Array  # bool [B, P + N]: real prompt tokens and valid response tokens (EOS included)
    response_mask: jax.Array  # bool [B, N]: valid response tokens, True up to and including EOS
    sample_logprobs: jax.Array  # float32 [B, N]: logprobs at sampling time
    ref_logprobs: jax.Array  # float32 [B, N]: reference model logprobs of the response tokens
    scores: jax.Array  # float32 [B]: rewards after the no-EOS penalty
    raw_scores: jax.Array  # float32 [B]: rewards before the penalty (the weighted sum of the sources)
    source_scores: jax.Array  # float32 [B, S]: each source's score, unweighted (reward_fn first, then the functions)
    ended: jax.Array  # bool [B]: the response produced EOS within the budget


def assemble(out: sampling.SampleOutput) -> tuple[jax.Array, jax.Array]:
    """(tokens, attention_mask) [B, P + N] of prompt + response rows."""
    tokens = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
    return tokens, jnp.concatenate([out.prompt_mask, out.mask], axis=1)


def make_scorer(ref_cfg: ModelConfig, reward_fn: Optional[RewardFn], *, temperature: float,
                no_eos_penalty_value: Optional[float] = 1.0, weights: Optional[Sequence[float]] = None
                ) -> Callable[..., Rollout]:
    """A pure `score(ref_params, reward_params, sample_output, function_scores=None) -> Rollout`:
    reference logprobs and the reward, with the no-EOS penalty (docs/formulas.md#no-eos-penalty; None
    disables it). Jit it (the trainer does).

    The reward is the weighted sum of the sources, in order: `reward_fn`'s score (None: no such
    source) and the rows of `function_scores` float32 [F, B] (reward functions' scores, computed on
    the host); `weights` has one weight per source (None: all 1).
    """
    def score(ref_params, reward_params, out: sampling.SampleOutput,
              function_scores: Optional[jax.Array] = None) -> Rollout:
        tokens, attention_mask = assemble(out)
        ref = response_logprobs(ref_cfg, ref_params, tokens, attention_mask, out.mask, temperature)
        sources = [] if reward_fn is None else [reward_fn(reward_params, tokens, attention_mask, out.mask)]
        if function_scores is not None:
            sources.extend(function_scores)
        if not sources:
            raise ValueError("no reward source: give a reward_fn or function_scores")
        source_scores = jnp.stack(sources, axis=-1).astype(jnp.float32)
        w = jnp.ones(len(sources), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
        if w.shape != (len(sources),):
            raise ValueError(f"{len(weights)} weights for {len(sources)} reward sources")
        raw = jnp.sum(source_scores * w, axis=-1)
        scores = raw if no_eos_penalty_value is None else no_eos_penalty(raw, out.ended, no_eos_penalty_value)
        return Rollout(tokens=tokens, attention_mask=attention_mask, response_mask=out.mask,
                       sample_logprobs=out.logprobs, ref_logprobs=ref, scores=scores, raw_scores=raw,
                       source_scores=source_scores, ended=out.ended)
    return score
