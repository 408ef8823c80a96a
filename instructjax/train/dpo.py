"""DPO and IPO (offline preference optimisation of the policy itself) on the shared loop: `train_dpo`.

Data: the reward model's comparisons (docs/data.md), one batch element per prompt with its K ranked
completions, each forwarded once per step. The loss is the mean over every ordered pair (w ranked
better than l; ties and padded slots give none, chosen/rejected records are K = 2) of
`ij.losses.dpo_pair_losses` (docs/formulas.md#dpo); the train step sums it over pairs and divides
by the pairs of the whole batch, so microbatches accumulate exactly.

Reference logprobs are computed once, with the frozen initial model (`config.init`, where the
policy starts too): before the first step, one in-order pass over each split scores every
completion (summed logprobs of completion + EOS given the prompt) into a table [records, K] saved
as WORKDIR/reference/<split>-<dataset fingerprint>.npy. The fingerprint is the built dataset's
config name, which carries the hash of its files and settings, so changed data get a new table; a
resumed or repeated run loads the file. The loader adds each record's row to its batch element as
`ref_logprobs` (`comparison_loader(record_arrays=...)`), so a training step forwards the policy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from instructjax import datasets, losses, parallel
from instructjax.data import Loader, comparison_loader
from instructjax.models import ModelConfig, Transformer
from instructjax.train import setup as setup_lib
from instructjax.train import step as step_lib
from instructjax.train.config import (comparison_config, loader_config, lora_config, num_train_steps, optim_config,
                                      resolve_dtypes)
from instructjax.train.export import export_model
from instructjax.train.initial_model import load_initial_model, with_adapters
from instructjax.train.inputs import build_dataset, check_batch_size
from instructjax.train.optim import learning_rate_schedule, make_optimizer
from instructjax.train.state import TrainState
from instructjax.train.step import LossFn
from instructjax.train.workdir import Workdir

REFERENCE_DIR = "reference"
SUMS = ("chosen_reward_sum", "rejected_reward_sum")


def completion_logprobs(cfg: ModelConfig, params: Any, tokens: jax.Array, attention_mask: jax.Array,
                        response_mask: jax.Array) -> jax.Array:
    """float32 [B, K]: log pi(completion + EOS | prompt) of comparison rows [B, K, T], the sum over the
    `response_mask` tokens; the B * K rows go through one forward, dropout off."""
    b, k, t = tokens.shape
    tokens, attention_mask, response_mask = (x.reshape(b * k, t) for x in (tokens, attention_mask, response_mask))
    logits = Transformer(cfg).apply({"params": params}, tokens, attention_mask=attention_mask, deterministic=True)
    return losses.sequence_logprobs(logits, tokens, response_mask).reshape(b, k)


def pair_sums(logprobs: jax.Array, ref_logprobs: jax.Array, ranks: jax.Array, valid: jax.Array, beta: float,
              kind: str) -> tuple[jax.Array, dict]:
    """(loss summed over the ordered pairs of each prompt's completions, aux) of summed logprobs [B, K]
    under the policy and the reference; aux = {"weight": pairs, "totals": counts and sums over pairs}."""
    pairs = losses.ordered_pair_mask(ranks, valid.astype(bool))  # [B, K, K]: (w, l) with w ranked better
    per_pair = losses.dpo_pair_losses(logprobs[:, :, None], logprobs[:, None, :], ref_logprobs[:, :, None],
                                      ref_logprobs[:, None, :], beta, kind)
    reward = beta * (logprobs - ref_logprobs)  # implicit reward of each completion
    chosen, rejected = jnp.broadcast_to(reward[:, :, None], pairs.shape), jnp.broadcast_to(reward[:, None, :],
                                                                                           pairs.shape)
    num_pairs = jnp.sum(pairs, dtype=jnp.int32)
    totals = {"pairs": num_pairs, "correct_pairs": jnp.sum(pairs & (chosen > rejected), dtype=jnp.int32),
              "chosen_reward_sum": jnp.sum(jnp.where(pairs, chosen, 0.0)),
              "rejected_reward_sum": jnp.sum(jnp.where(pairs, rejected, 0.0))}
    return jnp.sum(jnp.where(pairs, per_pair, 0.0)), {"weight": num_pairs, "totals": totals}


def derived_metrics(totals: dict) -> dict:
    """Reward accuracy (pairs with h > 0), the mean implicit rewards beta * (log pi - log pi_ref) of the
    chosen and rejected completions over pairs, and their margin, from the sums of `pair_sums`."""
    n = jnp.maximum(totals["pairs"], 1).astype(jnp.float32)
    chosen, rejected = totals["chosen_reward_sum"] / n, totals["rejected_reward_sum"] / n
    return {"accuracy": totals["correct_pairs"] / n, "chosen_reward": chosen, "rejected_reward": rejected,
            "margin": chosen - rejected}


def dpo_loss_fn(cfg: ModelConfig, beta: float, kind: str) -> LossFn:
    """`loss_fn(params, batch, rng) -> (loss_sum, aux)` for `train.step.make_train_step` on comparison
    batches with `ref_logprobs` [B, K]; the rng is unused (dropout off, as in the reference pass)."""
    def loss_fn(params: Any, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        del rng
        logprobs = completion_logprobs(cfg, params, batch["tokens"], batch["attention_mask"], batch["response_mask"])
        loss_sum, aux = pair_sums(logprobs, batch["ref_logprobs"], batch["ranks"], batch["valid"], beta, kind)
        aux["totals"]["tokens"] = jnp.sum(batch["attention_mask"], dtype=jnp.int32)
        return loss_sum, aux
    return loss_fn


def reference_logprobs(cfg: ModelConfig, params: Any, params_shardings: Any, loader: Loader, num_completions: int,
                       mesh: Mesh, rules) -> np.ndarray:
    """float32 [records, K]: `completion_logprobs` of every completion of an in-order, one-epoch
    `loader`, at the row of its record's index; 0 in padded slots, NaN for records the loader dropped."""
    def scores(p, batch):
        return (completion_logprobs(cfg, p, batch["tokens"], batch["attention_mask"], batch["response_mask"]),
                batch["index"], batch["valid"])

    fn = jax.jit(scores, in_shardings=(params_shardings, step_lib.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))
    table = np.full((loader.num_records, num_completions), np.nan, np.float32)
    placed = jax.device_put(params, params_shardings)
    for logprobs, index, valid in setup_lib.host_outputs(fn, placed, loader, mesh, rules):
        real = valid.any(axis=1)  # the padding rows of the last batch have no valid slot
        table[index[real]] = np.where(valid[real], logprobs[real], 0.0)
    return table


def cached(path: pathlib.Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at `path`, else `compute()` saved there (by process 0, atomically)."""
    if path.exists():
        logging.info("reference logprobs: loading %s", path)
        return np.load(path)
    table = compute()
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, table)
        tmp.replace(path)
        logging.info("reference logprobs of %d records written to %s", len(table), path)
    return table


def reference_key(config: ml_collections.ConfigDict, inputs: dict) -> str:
    """A hash of what the reference logprobs depend on besides the comparisons: the initial model (its
    settings, seed and files' sha256 from the run's input fingerprints) and how records become rows, so that
    a changed model (`accept_changed_inputs`) is scored anew instead of read from a stale cache."""
    model_files = sorted(v["sha256"] for v in inputs.values() if v["key"].startswith("init."))
    described = [config.init.to_dict(), config.model.to_dict(), config.data.to_dict(), config.seed, model_files]
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]


def reference_file(workdir: Workdir, built: datasets.BuiltDataset, split: str, key: str) -> pathlib.Path:
    """WORKDIR/reference/<split>-<the dataset's config name: its name and content hash>-<reference_key>.npy"""
    fingerprint = built.tfds_name.split("/", 1)[1].split(":")[0]
    return workdir.root / REFERENCE_DIR / f"{split}-{fingerprint}-{key}.npy"


def check_config(config: ml_collections.ConfigDict) -> None:
    if config.loss not in losses.PREFERENCE_LOSSES:
        raise ValueError(f"config.loss={config.loss!r}: expected one of {losses.PREFERENCE_LOSSES}")
    if config.beta <= 0:
        raise ValueError(f"config.beta={config.beta}: must be > 0")
    setup_lib.check_no_dropout(config, "DPO trains without dropout, like the reference pass")


def train_dpo(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike]) -> TrainState:
    """DPO or IPO (`config.loss`) as `config` says (experiments/configs/dpo.py), in `workdir`.

    Rerunning with the same config and workdir resumes from the latest checkpoint (the reference
    logprobs from WORKDIR/reference/) and gives the result of an uninterrupted run. Returns the
    final train state; the policy is exported to WORKDIR/export (HF format with the tokenizer)
    when `config.export`.
    """
    config = resolve_dtypes(config)
    check_config(config)
    run = setup_lib.start(config, workdir, num_keys=2)
    workdir, mesh, rules = run.workdir, run.mesh, run.rules
    init_rng, train_rng = run.keys
    cfg, params, tokenizer = load_initial_model(config.init, config.model, init_rng)
    # fresh adapters (B = 0) leave the model as it is: the reference pass below is the base model's
    cfg, params = with_adapters(cfg, params, lora_config(config), jax.random.fold_in(init_rng, 1))
    params_shardings = parallel.param_shardings(cfg, setup_lib.param_shapes(params), mesh, rules)

    built = build_dataset(config.data, "comparisons", workdir.data)
    comparisons = comparison_config(config.data)

    def loader(split: str, batch_size: int, train: bool) -> Loader:
        """Batches of `split` with their cached reference logprobs."""
        source = built.source(split)
        if len(source) % jax.process_count():  # the in-order pass would leave the last records out
            raise ValueError(f"DPO on {jax.process_count()} hosts needs a {split} split whose record count "
                             f"({len(source)}) divides by the host count")
        in_order = comparison_loader(source, tokenizer, comparisons,
                                     loader_config(config.data, config.eval.batch_size, config.seed, train=False),
                                     mesh)
        table = cached(reference_file(workdir, built, split, reference_key(config, run.inputs)),
                       lambda: reference_logprobs(cfg, params, params_shardings, in_order, comparisons.max_completions,
                                                  mesh, rules))
        return comparison_loader(source, tokenizer, comparisons,
                                 loader_config(config.data, batch_size, config.seed, train=train), mesh,
                                 record_arrays={"ref_logprobs": table})

    check_batch_size(config.eval.batch_size, 1, mesh, "eval.batch_size")
    train_loader = loader("train", config.batch_size, train=True)
    num_steps = num_train_steps(config, train_loader.num_records)
    optim = optim_config(config, num_steps)
    layout = setup_lib.train_state_layout(make_optimizer(optim), params, cfg, mesh, rules,
                                          param_shardings=params_shardings)
    loss_fn = dpo_loss_fn(cfg, config.beta, config.loss)
    step = step_lib.make_train_step(loss_fn, layout.tx, num_microbatches=config.microbatches,
                                    schedule=learning_rate_schedule(optim), nan_at_step=config.debug.nan_at_step)
    step = step_lib.with_derived_metrics(step, derived_metrics, drop=SUMS)

    evaluate = None
    if config.eval.every_steps > 0:
        setup_lib.check_validation_split(built.splits)
        validation = loader("validation", config.eval.batch_size, train=False)
        sums = setup_lib.compile_eval_sums(loss_fn, params_shardings, mesh)

        def evaluate(state: TrainState, step_number: int) -> dict[str, float]:
            del step_number
            outputs = setup_lib.host_outputs(sums, state.params, validation, mesh, rules, config.eval.num_batches)
            loss_sum, aux = jax.tree.map(lambda *x: np.sum(x, axis=0), *outputs)
            pairs = int(aux["totals"]["pairs"])
            derived = {k: float(v) for k, v in derived_metrics(aux["totals"]).items()}
            return {"loss": float(loss_sum) / max(pairs, 1), "pairs": pairs, **derived}

    def export(state: TrainState) -> None:
        export_model(workdir.export, cfg, state.params, tokenizer)

    step_fn = step_lib.compile_step(step, layout.state_shardings, mesh, rules)
    return setup_lib.run_loop(run, num_steps, step_fn=step_fn, init_state=lambda: layout.init(params),
                              abstract_state=layout.abstract_state, train_iterator=iter(train_loader),
                              rng=train_rng, eval_fn=evaluate, export_fn=export if config.export else None,
                              name="dpo")
