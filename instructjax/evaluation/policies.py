"""Measurements of a policy: reward-model scores of its responses, KL to a reference policy, and
perplexity on held-out text (the alignment tax outside the task)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from instructjax.data.render import completion_ids, prompt_ids, text_ids
from instructjax.evaluation.generation import SamplingConfig, prompt_batches, sample_batch
from instructjax.losses import token_logprobs
from instructjax.models import ModelConfig, Transformer
from instructjax.parallel import batches_over_processes
from instructjax.rewards.io import RewardModel
from instructjax.rl.forwards import response_logprobs
from instructjax.rl.rollout import assemble
from instructjax.tokenizers import Prompt, Tokenizer


def reward_scores(rm: RewardModel, tokenizer: Tokenizer, prompts: Sequence[Prompt], responses: Sequence[str], *,
                  batch_size: int = 16, chat_template: bool = True) -> np.ndarray:
    """float32 [N]: the reward model's (normalised) score of each prompt + response + EOS."""
    rows = [prompt_ids(tokenizer, p, chat_template, f"prompt {i}") + completion_ids(tokenizer, r)
            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    width = max(map(len, rows))

    def score(b: int) -> np.ndarray:
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        chunk += [chunk[-1]] * (batch_size - len(chunk))
        tokens, mask = np.zeros((batch_size, width), np.int32), np.zeros((batch_size, width), bool)
        for i, r in enumerate(chunk):
            tokens[i, :len(r)], mask[i, :len(r)] = r, True
        return np.asarray(rm.score(tokens, mask), np.float32)

    scores = [s for _, s in batches_over_processes(score, -(-len(rows) // batch_size))]
    return np.concatenate(scores)[:len(rows)]


@functools.partial(jax.jit, static_argnames=("cfg", "ref_cfg", "temperature"))
def _summed_kl(cfg, params, ref_cfg, ref_params, tokens, attention, response_mask, temperature):
    logprobs = response_logprobs(cfg, params, tokens, attention, response_mask, temperature)
    ref_logprobs = response_logprobs(ref_cfg, ref_params, tokens, attention, response_mask, temperature)
    return (logprobs - ref_logprobs).sum(-1)


def kl_to_reference(cfg: ModelConfig, params: Any, ref_cfg: ModelConfig, ref_params: Any, tokenizer: Tokenizer,
                    prompts: Sequence[Prompt], config: SamplingConfig, rng: jax.Array) -> np.ndarray:
    """float32 [N * k]: KL(policy || reference) of each sampled response, estimated as the sum over its
    tokens of log pi(y_t) - log pi_ref(y_t) under log_softmax(logits / T) (docs/formulas.md#kl-to-reference)."""
    batches = list(prompt_batches(tokenizer, prompts, config))

    def summed_kl(b: int) -> np.ndarray:
        begin, _, tokens, mask = batches[b]
        sample = sample_batch(cfg, params, tokenizer, tokens, mask, config,
                              jax.random.fold_in(rng, begin // config.batch_size))
        full, attention = assemble(sample)
        return np.asarray(_summed_kl(cfg, params, ref_cfg, ref_params, full, attention, sample.mask,
                                     config.temperature), np.float32)

    out = []
    with tqdm(total=len(prompts), desc="KL to reference", unit="prompt", leave=False) as bar:
        for b, kl in batches_over_processes(summed_kl, len(batches)):
            real = batches[b][1]
            out.append(kl[:real * config.k])
            bar.update(real)
    return np.concatenate(out)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _summed_nll(cfg, params, tokens, mask):
    """(summed -log p of each next token where both it and its context are real, count of such tokens)."""
    logits = Transformer(cfg).apply({"params": params}, tokens, attention_mask=mask, deterministic=True)
    targets, target_mask = tokens[:, 1:], mask[:, 1:] & mask[:, :-1]
    nll = -token_logprobs(logits[:, :-1], targets)
    return jnp.where(target_mask, nll, 0.0).sum(), target_mask.sum()


def perplexity(cfg: ModelConfig, params: Any, tokenizer: Tokenizer, texts: Sequence[str], *, max_len: int = 256,
               batch_size: int = 16) -> float:
    """exp of the mean next-token negative log-likelihood over `texts` (each with the tokenizer's special
    tokens and EOS, cut to its first `max_len` tokens): one number per policy, compared across policies
    on the same texts (InstructGPT's "alignment tax" on pretraining data)."""
    if not texts:
        raise ValueError("perplexity needs at least one text")
    rows = [text_ids(tokenizer, t)[:max_len] for t in texts]

    def summed_nll(b: int) -> np.ndarray:
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        tokens, mask = np.zeros((batch_size, max_len), np.int32), np.zeros((batch_size, max_len), bool)
        for i, r in enumerate(chunk):  # rows past the chunk stay fully masked: they add nothing
            tokens[i, :len(r)], mask[i, :len(r)] = r, True
        nll, n = jax.device_get(_summed_nll(cfg, params, tokens, mask))
        return np.array([nll, n], np.float64)

    total, count = 0.0, 0
    for _, (nll, n) in batches_over_processes(summed_nll, -(-len(rows) // batch_size)):
        total, count = total + float(nll), count + int(n)
    return float(np.exp(total / count))
