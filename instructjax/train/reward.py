"""Reward-model training (InstructGPT step 2) on the shared loop: `train_reward_model(config, workdir)`.

The RM starts from the SFT model (any `config.init` source), its LM head replaced by a scalar head.
Each step scores the K completions of every prompt in one forward and minimises eq. 1; evaluation
reports loss and pairwise accuracy (overall, by K, by rank gap; at the end also by the constraint
families of the prompts, for the default task's comparisons). At the end the scores are
normalised on reference demonstrations or SFT samples, a histogram of the validation scores is
drawn, and the RM is exported in HF format with its normalisation (`load_reward_model(workdir)`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from instructjax import datasets, parallel
from instructjax.data import SFTConfig, comparison_loader, prompt_texts, sft_loader
from instructjax.models import ModelConfig, lora
from instructjax.rewards import references
from instructjax.rewards.evaluation import (ComparisonScores, accuracy_by_family, comparison_metrics, pair_results,
                                           score_histogram)
from instructjax.rewards.io import export_reward_model
from instructjax.rewards.normalization import REFERENCES, Normalization, fit_normalization, save_normalization
from instructjax.rewards.objective import RewardLossConfig, derived_metrics, reward_loss_fn
from instructjax.rewards.scoring import completion_scores, reward_params_from_lm, sequence_scores
from instructjax.tokenizers import Tokenizer
from instructjax.train import setup as setup_lib
from instructjax.train import step as step_lib
from instructjax.train.config import (comparison_config, loader_config, lora_config, num_train_steps, optim_config,
                                      resolve_dtypes)
from instructjax.train.initial_model import load_initial_model, with_adapters
from instructjax.train.inputs import build_dataset
from instructjax.train.optim import learning_rate_schedule, make_optimizer
from instructjax.train.export import write_atomically
from instructjax.train.state import TrainState

HISTOGRAM_FILE = "score_histogram.png"
SUMMARY_FILE = "reward_eval.json"


def with_accuracy(step: step_lib.StepFn) -> step_lib.StepFn:
    """The step with pairwise accuracy and the score mean / std derived from its summed counts."""
    return step_lib.with_derived_metrics(step, derived_metrics, drop=("score_sum", "score_sq_sum"))


def token_counting(loss_fn):
    """`loss_fn` whose totals also count the real tokens of the batch (the loop's tokens/s)."""
    def counted(params, batch, rng):
        loss_sum, aux = loss_fn(params, batch, rng)
        aux["totals"]["tokens"] = jnp.sum(batch["attention_mask"], dtype=jnp.int32)
        return loss_sum, aux
    return counted


class _Scorer:
    """Jit-compiled scoring of sharded batches with replicated (host-readable) outputs."""

    def __init__(self, cfg: ModelConfig, params_shardings: Any, mesh: Mesh, rules):
        self.mesh, self.rules = mesh, rules
        rows, replicated = step_lib.batch_sharding(mesh), parallel.replicated(mesh)

        def comparisons(params, tokens, mask, ranks, valid, index):
            return completion_scores(cfg, params, tokens, mask), ranks, valid, index

        def sequences(params, tokens, mask):
            return sequence_scores(cfg, params, tokens, mask), jnp.any(mask, axis=-1)

        self._comparisons = jax.jit(comparisons, in_shardings=(params_shardings,) + (rows,) * 5,
                                    out_shardings=replicated)
        self._sequences = jax.jit(sequences, in_shardings=(params_shardings, rows, rows), out_shardings=replicated)

    def comparisons(self, params, batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(scores, ranks, valid, index) of every row of the global batch, on every host."""
        with parallel.activation_sharding(self.mesh, self.rules):
            out = self._comparisons(params, batch["tokens"], batch["attention_mask"], batch["ranks"], batch["valid"],
                                    batch["index"])
        return jax.device_get(out)

    def sequences(self, params, tokens, mask) -> tuple[np.ndarray, np.ndarray]:
        with parallel.activation_sharding(self.mesh, self.rules):
            return jax.device_get(self._sequences(params, tokens, mask))


def validation_scores(scorer: _Scorer, params: Any, loader, num_batches: int) -> ComparisonScores:
    """Raw scores of the validation comparisons (`num_batches` batches; 0: all), with their records' indices."""
    scores, ranks, valid, index = [], [], [], []
    for s, r, v, x in setup_lib.host_outputs(scorer.comparisons, params, loader, scorer.mesh, scorer.rules,
                                             num_batches):
        keep = v.any(axis=1)  # padding rows of the last batch
        scores.append(s[keep]), ranks.append(r[keep]), valid.append(v[keep]), index.append(x[keep])
    return ComparisonScores(np.concatenate(scores), np.concatenate(ranks), np.concatenate(valid),
                            np.concatenate(index))


def reference_scores(config: ml_collections.ConfigDict, scorer: _Scorer, params: Any,
                     policy: Optional[tuple[ModelConfig, Any]], tokenizer: Tokenizer, mesh: Mesh, data_dir,
                     rng: jax.Array) -> tuple[np.ndarray, dict[str, int]]:
    """Raw RM scores of the normalisation references of `config.normalize`, and the counts of the
    records read and dropped (too long) on the way."""
    norm = config.normalize
    if norm.reference == "demonstrations":
        built = build_dataset(norm.data, "demonstrations", data_dir)
        sft_config = SFTConfig(max_len=config.data.max_len, truncation=config.data.truncation,
                               chat_template=config.data.chat_template)
        loader = sft_loader(built.source("train"), tokenizer, sft_config,
                            loader_config(norm.data, norm.batch_size, config.seed, train=False), mesh)
        it = iter(loader)
        try:
            scores = references.demonstration_scores(
                lambda b: scorer.sequences(params, b["tokens"], b["attention_mask"]), it, norm.max_examples)
            return scores, it.stats
        finally:
            it.close()
    built = build_dataset(norm.data, "prompts", data_dir)
    source = built.source("train")
    count = len(source) if not norm.max_examples else min(norm.max_examples, len(source))
    prompts = [datasets.decode("prompts", source[i])["prompt"] for i in range(count)]
    policy_cfg, policy_params = policy
    scores = references.sample_scores(lambda t, m: scorer.sequences(params, t, m)[0], policy_cfg, policy_params,
                                      tokenizer, prompts, chat_template=config.data.chat_template, rng=rng,
                                      max_new_tokens=norm.max_new_tokens, temperature=norm.temperature,
                                      batch_size=norm.batch_size, mesh=mesh)
    return scores, {"records": count}


def check_config(config: ml_collections.ConfigDict) -> None:
    setup_lib.check_no_dropout(config, "the reward model trains and scores without dropout")
    if config.normalize.reference not in REFERENCES:
        raise ValueError(f"config.normalize.reference={config.normalize.reference!r}: expected one of {REFERENCES}")


def train_reward_model(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike]) -> TrainState:
    """Train, evaluate, normalise and export a reward model as `config` says (experiments/configs/reward.py).

    Rerunning with the same config and workdir resumes from the latest checkpoint and gives the
    result of an uninterrupted run. Returns the final train state (raw, unnormalised params); the
    normalised model is in WORKDIR/export when `config.export` (`ij.rewards.load_reward_model(workdir)`).
    """
    config = resolve_dtypes(config)
    check_config(config)
    run = setup_lib.start(config, workdir, num_keys=4)
    workdir, mesh, rules = run.workdir, run.mesh, run.rules
    init_rng, head_rng, train_rng, sample_rng = run.keys
    cfg, lm_params, tokenizer = load_initial_model(config.init, config.model, init_rng)
    params = reward_params_from_lm(cfg, lm_params, head_rng)
    policy = None
    if config.normalize.reference == "sft_samples":
        if "score_head" in lm_params:
            raise ValueError("config.normalize.reference='sft_samples' needs an SFT policy (an LM) as config.init, "
                             "not a reward model")
        policy = (cfg, lm_params)
    del lm_params
    cfg, params = with_adapters(cfg, params, lora_config(config), jax.random.fold_in(head_rng, 1))

    data_dir = config.data.data_dir or workdir.data
    built = build_dataset(config.data, "comparisons", data_dir)
    comparisons = comparison_config(config.data)
    train_source = built.source("train")
    loader = comparison_loader(train_source, tokenizer, comparisons,
                               loader_config(config.data, config.batch_size, config.seed, train=True), mesh)
    num_steps = num_train_steps(config, len(train_source))
    optim = optim_config(config, num_steps)
    layout = setup_lib.train_state_layout(make_optimizer(optim), params, cfg, mesh, rules, head="scalar")
    options = RewardLossConfig(margin=config.loss.margin, center_coef=config.loss.center_coef)
    step = step_lib.make_train_step(token_counting(reward_loss_fn(cfg, options)), layout.tx,
                                    num_microbatches=config.microbatches, schedule=learning_rate_schedule(optim),
                                    nan_at_step=config.debug.nan_at_step)
    scorer = _Scorer(cfg, layout.param_shardings, mesh, rules)
    validation = validation_source = None
    if config.eval.every_steps > 0:
        setup_lib.check_validation_split(built.splits)
    if "validation" in built.splits:
        validation_source = built.source("validation")
        validation = comparison_loader(validation_source, tokenizer, comparisons,
                                       loader_config(config.data, config.eval.batch_size, config.seed, train=False),
                                       mesh)
    last_eval: dict[str, Any] = {}

    def evaluate(state: TrainState, step_number: int) -> dict[str, float]:
        scores = validation_scores(scorer, state.params, validation, config.eval.num_batches)
        last_eval.update(step=step_number, scores=scores)
        return comparison_metrics(scores)

    def finish(state: TrainState) -> None:
        """Normalise, evaluate the normalised model, draw the histogram, export."""
        step_number = int(jax.device_get(state.step))
        norm = Normalization()
        ref = None
        if config.normalize.reference != "none":
            raw_ref, ref_stats = reference_scores(config, scorer, state.params, policy, tokenizer, mesh, data_dir,
                                                  sample_rng)
            norm = fit_normalization(raw_ref, unit_std=config.normalize.unit_std, reference=config.normalize.reference)
            ref = norm.apply(raw_ref)
            logging.info("normalisation on %d %s (%s): raw mean %.4g std %.4g -> gain %.4g bias %.4g", norm.count,
                         norm.reference, ", ".join(f"{k} {v}" for k, v in ref_stats.items()), norm.raw_mean,
                         norm.raw_std, norm.gain, norm.bias)
        summary: dict[str, Any] = {"step": step_number, "normalization": norm.to_json()}
        if ref is not None:
            summary["normalization_data"] = ref_stats
        if validation is not None:
            raw = last_eval["scores"] if last_eval.get("step") == step_number else \
                validation_scores(scorer, state.params, validation, config.eval.num_batches)
            scores = ComparisonScores(norm.apply(raw.scores).astype(np.float32), raw.ranks, raw.valid, raw.index)
            summary["validation"] = comparison_metrics(scores)
            rows, correct = pair_results(scores)
            texts = prompt_texts(validation_source, scores.index)
            by_family = accuracy_by_family([texts[r] for r in rows], correct)
            if by_family:  # the default task's prompts
                summary["validation"]["families"] = {f: rate.to_json() for f, rate in by_family.items()}
            if jax.process_index() == 0:
                score_histogram(workdir.root / HISTOGRAM_FILE, scores, reference=ref,
                                title=f"reward model scores, step {step_number} (normalised)")
        if jax.process_index() == 0:
            (workdir.root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        if config.export:
            plain_cfg, params = lora.merged_model(cfg, parallel.host_values(state.params))
            write_atomically(workdir.export, lambda tmp: export_reward_model(tmp, plain_cfg, params, tokenizer, norm))
        elif jax.process_index() == 0:
            save_normalization(workdir.root, norm, folded_into_params=False)

    step_fn = step_lib.compile_step(with_accuracy(step), layout.state_shardings, mesh, rules)
    return setup_lib.run_loop(run, num_steps, step_fn=step_fn, init_state=lambda: layout.init(params),
                              abstract_state=layout.abstract_state, train_iterator=iter(loader), rng=train_rng,
                              eval_fn=evaluate if config.eval.every_steps > 0 else None, export_fn=finish,
                              name="reward")
