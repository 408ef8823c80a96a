"""Supervised fine-tuning (InstructGPT step 1): the loss on demonstrations and `train_sft`."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Union

import jax
import jax.numpy as jnp
import ml_collections
import optax

from instructjax import datasets
from instructjax.data import SFTConfig, sft_loader
from instructjax.losses import next_token_targets, token_logprobs
from instructjax.models import ModelConfig, Transformer
from instructjax.tokenizers import Tokenizer
from instructjax.train import loop
from instructjax.train import setup as setup_lib
from instructjax.train import step as step_lib
from instructjax.train.config import loader_config, lora_config, num_train_steps, optim_config, resolve_dtypes
from instructjax.train.export import export_model
from instructjax.train.initial_model import load_initial_model, with_adapters
from instructjax.train.inputs import build_dataset, check_batch_size
from instructjax.train.optim import OptimConfig, learning_rate_schedule, make_optimizer
from instructjax.train.samples import generate_responses, write_samples
from instructjax.train.state import TrainState
from instructjax.train.step import LossFn


def shifted_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """Targets and loss mask aligned with the logits: position i predicts token i + 1
    (docs/formulas.md#token-alignment); the last position predicts nothing."""
    return next_token_targets(batch["tokens"], batch["loss_mask"])


def sft_loss_fn(cfg: ModelConfig, *, deterministic: bool = False) -> LossFn:
    """Summed token cross-entropy over the loss-mask targets (docs/formulas.md#sft-loss), weight = their count.

    Dropout (cfg.dropout_rate, cfg.attention_dropout) is active unless `deterministic`.
    """
    model = Transformer(cfg)

    def loss_fn(params, batch: dict, rng: jax.Array):
        logits = model.apply({"params": params}, batch["tokens"], batch["positions"], batch["attention_mask"],
                             segment_ids=batch["segment_ids"], deterministic=deterministic, rngs={"dropout": rng})
        targets, mask = shifted_targets(batch)
        nll = -token_logprobs(logits, targets)
        weight = jnp.sum(mask, dtype=jnp.int32)
        totals = {"tokens": jnp.sum(batch["attention_mask"], dtype=jnp.int32), "loss_tokens": weight}
        return jnp.sum(jnp.where(mask, nll, 0.0)), {"weight": weight, "totals": totals}

    return loss_fn


def sft_train_step(config: ml_collections.ConfigDict, cfg: ModelConfig, tx: optax.GradientTransformation,
                   optim: OptimConfig) -> step_lib.StepFn:
    """The SFT train step of `config` (microbatches, the nan test hook) with `tx`, made from `optim`."""
    return step_lib.make_train_step(sft_loss_fn(cfg), tx, num_microbatches=config.microbatches,
                                    schedule=learning_rate_schedule(optim), nan_at_step=config.debug.nan_at_step)


@dataclasses.dataclass(frozen=True)
class SFTSetup:
    """What `train_sft` assembles once from the config: the started run (workdir, mesh), model, tokenizer, data."""

    run: setup_lib.Run
    cfg: ModelConfig
    tokenizer: Tokenizer
    dataset: datasets.BuiltDataset
    sft_config: SFTConfig


def sft_data_config(data: ml_collections.ConfigDict) -> SFTConfig:
    """The pipeline settings of `config.data`."""
    return SFTConfig(max_len=data.max_len, truncation=data.truncation, loss_on=data.loss_on, pack=data.pack,
                     chat_template=data.chat_template)


def make_evaluator(setup: SFTSetup, params_shardings: Any, rng: jax.Array) -> loop.EvalFn:
    """Validation loss / perplexity over `eval.num_batches` batches (0: all), and `eval.num_samples`
    sampled answers to validation prompts written to WORKDIR/samples/step_<step>.txt."""
    config, mesh = setup.run.config, setup.run.mesh
    setup_lib.check_validation_split(setup.dataset.splits)
    check_batch_size(config.eval.batch_size, 1, mesh, "eval.batch_size")
    source = setup.dataset.source("validation")
    loader = sft_loader(source, setup.tokenizer, setup.sft_config,
                        loader_config(config.data, config.eval.batch_size, config.seed, train=False), mesh)
    loss_fn = sft_loss_fn(setup.cfg, deterministic=True)
    sums = setup_lib.compile_eval_sums(loss_fn, params_shardings, mesh)
    records = [datasets.decode("demonstrations", source[i]) for i in range(min(config.eval.num_samples, len(source)))]

    def validation_loss(params) -> tuple[float, int]:
        loss_sum, weight = 0.0, 0
        for batch_loss, aux in setup_lib.host_outputs(sums, params, loader, mesh, setup.run.rules,
                                                      config.eval.num_batches):
            loss_sum, weight = loss_sum + float(batch_loss), weight + int(aux["weight"])
        return loss_sum / max(weight, 1), weight

    def evaluate(state: TrainState, step: int) -> dict[str, float]:
        loss, weight = validation_loss(state.params)
        if records:
            prompts = [r["prompt"] for r in records]
            responses = generate_responses(
                setup.cfg, state.params, setup.tokenizer, prompts, chat_template=setup.sft_config.chat_template,
                rng=jax.random.fold_in(rng, step), max_new_tokens=config.eval.max_new_tokens,
                temperature=config.eval.temperature, mesh=mesh)
            write_samples(setup.run.workdir.samples / f"step_{step:06d}.txt", step, prompts, responses,
                          [r["response"] for r in records])
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "loss_tokens": weight}

    return evaluate


def train_sft(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike]) -> TrainState:
    """Supervised fine-tuning as `config` says (see experiments/configs/sft.py), in `workdir`.

    Rerunning with the same config and workdir resumes from the latest checkpoint and gives the
    result of an uninterrupted run. Returns the final train state; the model is exported to
    WORKDIR/export (HF format with the tokenizer) when `config.export`.
    """
    config = resolve_dtypes(config)
    run = setup_lib.start(config, workdir, num_keys=3)
    mesh = run.mesh
    init_rng, train_rng, sample_rng = run.keys
    cfg, params, tokenizer = load_initial_model(config.init, config.model, init_rng)
    cfg, params = with_adapters(cfg, params, lora_config(config), jax.random.fold_in(init_rng, 1))
    setup = SFTSetup(run=run, cfg=cfg, tokenizer=tokenizer,
                     dataset=build_dataset(config.data, "demonstrations", run.workdir.data),
                     sft_config=sft_data_config(config.data))

    train_source = setup.dataset.source("train")
    loader = sft_loader(train_source, tokenizer, setup.sft_config,
                        loader_config(config.data, config.batch_size, config.seed, train=True), mesh)
    num_steps = num_train_steps(config, len(train_source))
    optim = optim_config(config, num_steps)
    layout = setup_lib.train_state_layout(make_optimizer(optim), params, cfg, mesh, run.rules)
    step = sft_train_step(config, cfg, layout.tx, optim)
    eval_fn = make_evaluator(setup, layout.param_shardings, sample_rng) if config.eval.every_steps > 0 else None

    def export(state: TrainState) -> None:
        export_model(run.workdir.export, cfg, state.params, tokenizer)

    step_fn = step_lib.compile_step(step, layout.state_shardings, mesh, run.rules)
    return setup_lib.run_loop(run, num_steps, step_fn=step_fn, init_state=lambda: layout.init(params),
                              abstract_state=layout.abstract_state, train_iterator=iter(loader), rng=train_rng,
                              eval_fn=eval_fn, export_fn=export if config.export else None, name="sft")
