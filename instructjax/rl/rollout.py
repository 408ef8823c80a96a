"""PPO rollouts: sample responses, then score them (reference logprobs, reward) in one compiled
function; a rollout batch is a pytree of arrays (docs/formulas.md#sampling, #no-eos-penalty). Also the forwards the
update reads responses with, and the two ways of holding a model: a value head on the policy trunk
(`add_value_head`) and frozen models kept in their compute dtype (`frozen_model`).

    out = sample_responses(policy_cfg, policy_params, prompts, prompt_mask, rng=..., settings=...)
    batch = make_scorer(...)(ref_params, reward_params, out)   # a `Rollout`

The reward is one source computed in the scorer (a reward model, `reward_fn`), the scores of reward
functions computed on the host between sampling and scoring (`function_scores`), or a weighted sum.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from instructjax import sampling
from instructjax.losses import token_logprobs
from instructjax.models import ModelConfig, Transformer
from instructjax.rl.rewards import no_eos_penalty
from instructjax.rewards.scoring import init_score_head, sequence_scores

VALUE_HEAD = "score_head"  # params key of a value head on the policy trunk (the name a scalar Transformer uses)

# reward_fn(reward_params, tokens [B, P+N], attention_mask [B, P+N], response_mask [B, N]) -> scores [B]
RewardFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


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

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.response_mask.shape[1]


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (docs/formulas.md#sampling)."""

    max_new_tokens: int = 64  # response budget
    temperature: float = 1.0  # T; every logprob is log_softmax(logits / T) (docs/formulas.md#tempered-logprobs)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    eos_id: Optional[int] = None  # ends a response
    pad_id: int = 0  # fills responses after EOS (masked)
    dtype: Optional[str] = None  # sampling compute dtype (None: the model's)
    ignore_eos: bool = False  # force all max_new_tokens (benchmarks)


def sample_responses(cfg: ModelConfig, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array, *,
                     rng: jax.Array, settings: SamplingSettings, mesh: Optional[Mesh] = None) -> sampling.SampleOutput:
    """Responses to left-padded prompts from the compiled sampler (no prompt bucketing: the rollout
    keeps the loader's prompt length, so every iteration has the same shapes)."""
    return sampling.generate(cfg, params, prompt_tokens, prompt_mask, rng=rng, max_new_tokens=settings.max_new_tokens,
                             temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                             eos_id=settings.eos_id, pad_id=settings.pad_id, dtype=settings.dtype, prompt_bucket=None,
                             ignore_eos=settings.ignore_eos, mesh=mesh)


def response_positions(prompt_len: int, num_new: int, rows: int) -> jax.Array:
    """int32 [B, N]: the model output index read for response token t is prompt_len + t - 1
    (docs/formulas.md#token-alignment)."""
    return jnp.broadcast_to(jnp.arange(prompt_len - 1, prompt_len - 1 + num_new, dtype=jnp.int32), (rows, num_new))


def response_outputs(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array, num_new: int,
                     head: str = "lm", return_hidden: bool = False):
    """The model's `head` output [B, N, ...] at the state before each response token, dropout off
    (docs/formulas.md#token-alignment, #dropout-off)."""
    rows, total = tokens.shape
    return Transformer(cfg, head=head).apply({"params": params}, tokens, attention_mask=attention_mask,
                                             deterministic=True, return_hidden=return_hidden,
                                             output_positions=response_positions(total - num_new, num_new, rows))


def response_logits(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                    num_new: int) -> jax.Array:
    """float32 [B, N, V]: logits predicting each response token."""
    return response_outputs(cfg, params, tokens, attention_mask, num_new)


def response_logprobs(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                      response_mask: jax.Array, temperature: float) -> jax.Array:
    """float32 [B, N]: log_softmax(logits / T) of each response token, 0 where masked."""
    num_new = response_mask.shape[1]
    logits = response_logits(cfg, params, tokens, attention_mask, num_new)
    return jnp.where(response_mask, token_logprobs(logits, tokens[:, -num_new:], temperature), 0.0)


def response_values(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                    response_mask: jax.Array) -> jax.Array:
    """float32 [B, N]: a value model's scalar head at the state before each response token
    (docs/formulas.md#value-model)."""
    values = response_outputs(cfg, params, tokens, attention_mask, response_mask.shape[1], head="scalar")
    return jnp.where(response_mask, values.astype(jnp.float32), 0.0)


def add_value_head(cfg: ModelConfig, lm_params: dict, rng: jax.Array) -> dict:
    """Policy params with a fresh scalar value head on the trunk (Ziegler et al. 2019; docs/formulas.md#value-model):
    one network, two heads.
    The LM ignores the head's params, so sampling and PPO-ptx take these params as they are."""
    return {**lm_params, VALUE_HEAD: init_score_head(cfg, rng)}


def lm_params(params: dict) -> dict:
    """The language model of policy params, without a value head (for export)."""
    return {k: v for k, v in params.items() if k != VALUE_HEAD}


def response_logits_and_values(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                               response_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits float32 [B, N, V], values float32 [B, N]) of a policy with a value head (`add_value_head`):
    ONE trunk forward, the LM head and the value head both read from its final hidden states."""
    logits, hidden = response_outputs(cfg, params, tokens, attention_mask, response_mask.shape[1],
                                      return_hidden=True)
    head = params[VALUE_HEAD]
    values = jnp.einsum("bnd,d->bn", hidden.astype(jnp.float32), head["kernel"][:, 0].astype(jnp.float32))
    return logits, jnp.where(response_mask, values + head["bias"][0].astype(jnp.float32), 0.0)


def frozen_model(cfg: ModelConfig, params: Any, dtype: str = "") -> tuple[ModelConfig, Any]:
    """A frozen model (reference, reward) kept in `dtype` ("": its compute dtype): the config computing in
    that dtype and the params cast to it once (a scalar head stays float32), not on every call."""
    cfg = cfg.replace(dtype=dtype or cfg.dtype)
    return cfg, sampling._cast_params(params, jnp.dtype(cfg.dtype))  # the sampler's one-time cast


def reward_model_fn(cfg: ModelConfig) -> RewardFn:
    """The reward model's score at the last real token of prompt + response (EOS when present)."""
    def reward_fn(params, tokens, attention_mask, response_mask):
        del response_mask
        return sequence_scores(cfg, params, tokens, attention_mask)
    return reward_fn


def token_count_reward(token_id: int) -> RewardFn:
    """A synthetic reward for tests and demos: how often `token_id` appears in the valid response."""
    def reward_fn(params, tokens, attention_mask, response_mask):
        del params, attention_mask
        response = tokens[:, -response_mask.shape[1]:]
        return jnp.sum((response == token_id) & response_mask, axis=-1).astype(jnp.float32)
    return reward_fn


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
