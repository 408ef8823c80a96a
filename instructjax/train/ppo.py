"""PPO / PPO-ptx (InstructGPT step 3) on the shared loop: `train_ppo(config, workdir)`.

Each loop step is one PPO iteration: a batch of prompts -> responses from the compiled sampler ->
reward functions' scores on the host (if any, `instructjax.train.ppo_rewards`) -> reference
logprobs and reward scores (one jit) -> the whole PPO update (one jit, see `instructjax.train.ppo_update`).
The checkpointed state (`ij.train.PPOState`) holds the policy, the value model (or a value head on the
policy trunk), the optimizer states and the KL coefficient; the data position covers the prompts
and the pretraining text. The final policy LM is exported to WORKDIR/export.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Union

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from instructjax import models, parallel
from instructjax.models import lora
from instructjax.data import PretrainingConfig, PromptConfig, pretraining_loader, prompt_loader
from instructjax.rewards.io import load_reward_model
from instructjax.rewards.scoring import reward_params_from_lm
from instructjax.rl.frozen import frozen_model
from instructjax.rl.in_graph_rewards import reward_model_fn, token_count_reward
from instructjax.rl.rollout import Rollout, make_scorer
from instructjax.rl.sampler import SamplingSettings, sample_responses
from instructjax.rl.value_head import VALUE_HEAD, add_value_head, lm_params
from instructjax.train.ppo_update import PPOConfig, PPOState, init_ppo_state, make_ppo_update
from instructjax.train import setup as setup_lib
from instructjax.train.config import loader_config, lora_config, optim_config, resolve_dtypes
from instructjax.train.export import export_model
from instructjax.train.initial_model import load_initial_model, with_adapters, with_overrides
from instructjax.train.inputs import build_dataset, check_batch_size
from instructjax.train.optim import make_optimizer
from instructjax.train.ppo_rewards import FunctionScorer, RewardSources, reward_sources, source_metrics

VALUE_INITS = ("reward", "policy", "shared")


class PromptsAndText(grain.DatasetIterator):
    """Prompt batches, each paired with a batch of pretraining rows (PPO-ptx); one checkpointable position."""

    def __init__(self, prompts: grain.DatasetIterator, text: Optional[grain.DatasetIterator]):
        super().__init__([prompts] + ([text] if text is not None else []))
        self.prompts, self.text = prompts, text

    @property
    def stats(self) -> dict:
        return self.prompts.stats

    def __next__(self) -> dict:
        return {"prompts": next(self.prompts), "ptx": None if self.text is None else next(self.text)}

    def get_state(self) -> dict:
        state = {"prompts": self.prompts.get_state()}
        if self.text is not None:
            state["ptx"] = self.text.get_state()
        return state

    def set_state(self, state: dict) -> None:
        self.prompts.set_state(state["prompts"])
        if self.text is not None:
            self.text.set_state(state["ptx"])

    def close(self) -> None:
        for it in (self.prompts, self.text):
            if it is not None and hasattr(it, "close"):
                it.close()


def ppo_config(config: ml_collections.ConfigDict) -> PPOConfig:
    p = config.ppo
    return PPOConfig(ppo_epochs=p.epochs, num_minibatches=p.num_minibatches, microbatches=config.microbatches,
                     clip_eps=p.clip_eps, value_clip=p.value_clip, vf_coef=p.vf_coef, gamma=p.gamma, lam=p.lam,
                     temperature=config.rollout.temperature, kl_kind=config.kl.estimator,
                     kl_in_loss=config.kl.in_loss,
                     whiten_rewards=p.whiten_rewards, whiten_advantages=p.whiten_advantages,
                     gamma_ptx=config.ptx.gamma, adaptive_kl=config.kl.controller == "adaptive",
                     kl_target=config.kl.target, kl_horizon=config.kl.horizon, advantage=config.advantage,
                     group_size=config.rollout.group_size)


def check_config(config: ml_collections.ConfigDict) -> RewardSources:
    """The reward sources of `config`; a ValueError naming the key of a setting PPO would not honour
    (`train_ppo` and the pipeline call this before anything is written)."""
    sources = reward_sources(config.reward)
    ppo_config(config)  # PPOConfig checks advantage and rollout.group_size
    lora_config(config)  # a bad lora.* value stops here
    if config.num_epochs:
        raise ValueError(f"ppo: num_epochs={config.num_epochs} is not read: PPO runs num_steps iterations (rollout "
                         "batches; passes over each batch: ppo.epochs); use num_steps and leave num_epochs at 0")
    if config.num_steps <= 0:
        raise ValueError(f"ppo: num_steps={config.num_steps}: set the number of PPO iterations (rollout batches), > 0")
    for key in ("data", "ptx.data"):
        data = config.data if key == "data" else config.ptx.data
        if data.validation_files or data.validation_fraction:
            raise ValueError(f"ppo: {key}.validation_files={tuple(data.validation_files)} / {key}.validation_fraction="
                             f"{data.validation_fraction}: PPO reads training records only (no validation pass of its "
                             "own; the pipeline measures held-out prompts through eval.every_steps): leave them () / 0")
    setup_lib.check_no_dropout(config, "every PPO forward runs without dropout", key="ppo: model")
    if config.advantage == "gae":  # the group baselines read no value.*
        if config.value.init not in VALUE_INITS:
            raise ValueError(f"value.init={config.value.init!r}: expected one of {VALUE_INITS}")
        if config.value.init == "reward" and not sources.has_reward_model:
            raise ValueError(f"value.init='reward' needs a reward model, and reward.source={config.reward.source!r} "
                             "reads none: set value.init to 'policy' (a copy of the policy trunk) or 'shared' (a value "
                             "head on the policy trunk)")
    return sources


def check_batches(config: ml_collections.ConfigDict, c: PPOConfig, mesh) -> None:
    """The prompt batch (sharded before it is repeated), the episodes and the PPO-ptx rows over the mesh."""
    check_batch_size(config.batch_size, 1, mesh)
    check_batch_size(config.batch_size * c.group_size, c.num_minibatches * c.microbatches, mesh,
                     "batch_size x rollout.group_size")
    if c.gamma_ptx > 0:
        check_batch_size(config.ptx.batch_size, c.num_minibatches * c.microbatches, mesh, "ptx.batch_size")


def load_reward(config: ml_collections.ConfigDict, sources: RewardSources, policy_cfg: models.ModelConfig,
                policy_params: Any, rng: jax.Array):
    """(reward cfg, reward params) of the reward model, as loaded (a random one for "random");
    (None, None) when there is none (token_count, reward functions alone)."""
    if not sources.has_reward_model:
        return None, None
    if sources.in_graph == "random":
        return policy_cfg, reward_params_from_lm(policy_cfg, policy_params, rng)
    rm = load_reward_model(config.reward.path)
    return rm.cfg, rm.params


def init_value(config: ml_collections.ConfigDict, cfg: models.ModelConfig, policy_params: Any, reward_cfg,
               reward_params: Any):
    """(value cfg, value params, policy params) of `config.value.init` (`check_config`d): a separate
    network from the reward model ("reward") or the policy trunk with a zero value head ("policy"), or
    (None, None, the policy params with a zero value head added) for a value head on the policy trunk
    ("shared"); (None, None, the policy params) for the group baselines, which need no value function."""
    if config.advantage != "gae":
        logging.info("advantage=%r: no value function (value.* is not read)", config.advantage)
        return None, None, policy_params
    if config.value.init == "shared":
        return None, None, add_value_head(cfg, policy_params)
    if config.value.init == "reward":
        value_cfg, value_params = reward_cfg, reward_params
    else:
        value_cfg, value_params = cfg, add_value_head(cfg, {k: v for k, v in policy_params.items() if k != "lm_head"})
    # a separate value network, from the reward model or the policy, trains like the policy: config.model's
    # dtypes, remat_policy, scan_layers and frozen_layers (its lowest blocks frozen too, as a copy of the
    # policy's cfg always had them); the reward model keeps its own size
    value_cfg, value_params = with_overrides(value_cfg, value_params, config.model)
    return value_cfg, value_params, policy_params


def reference_model(config: ml_collections.ConfigDict, cfg: models.ModelConfig, initial_params: Any
                    ) -> tuple[models.ModelConfig, Optional[Any]]:
    """(cfg, params) of the frozen reference model: the initial policy kept in `reference.dtype`; with LoRA
    (`lora.rank` > 0) the policy's own base weights with the adapters off, computing in `reference.dtype`
    (params None: the trainer takes them from the policy state at every iteration, so the base model is held
    once, not twice)."""
    if not config.lora.rank:
        return frozen_model(cfg, initial_params, config.reference.dtype)
    return cfg.replace(dtype=config.reference.dtype or cfg.dtype), None


def lora_reference(policy_params: Any) -> Any:
    """The reference params of a LoRA policy (`reference_model`'s None): its base weights, without the
    adapters and the value head."""
    return lora.without_adapters(lm_params(policy_params))


def with_lora(config: ml_collections.ConfigDict, cfg: models.ModelConfig, policy_params: Any,
              value_cfg: Optional[models.ModelConfig], value_params: Any, rng: jax.Array):
    """(policy cfg, policy params, value cfg, value params) with fresh adapters of `config.lora` on the policy
    and on a separate value network, which then train only their adapters and heads; unchanged at rank 0."""
    adapters = lora_config(config)
    cfg, policy_params = with_adapters(cfg, policy_params, adapters, jax.random.fold_in(rng, 0))
    if value_cfg is not None:
        value_cfg, value_params = with_adapters(value_cfg, value_params, adapters, jax.random.fold_in(rng, 1))
    return cfg, policy_params, value_cfg, value_params


def reward_function(config: ml_collections.ConfigDict, sources: RewardSources, cfg: models.ModelConfig, reward_cfg,
                    reward_params: Any):
    """(reward_fn, reward params) of the in-graph source: a reward model kept frozen in `reward.dtype`
    ("": the policy's compute dtype), the token count, or (None, None) for reward functions alone."""
    if sources.in_graph is None:
        return None, None
    if sources.in_graph == "token_count":
        return token_count_reward(config.reward.token_id), None
    reward_cfg, reward_params = frozen_model(reward_cfg, reward_params, config.reward.dtype or cfg.dtype)
    return reward_model_fn(reward_cfg), reward_params


def policy_param_shardings(cfg: models.ModelConfig, shapes: Any, mesh, rules) -> Any:
    """Shardings of the policy params; a value head on the trunk is laid out like a reward model's head."""
    shardings = parallel.param_shardings(cfg, lm_params(shapes), mesh, rules)
    if VALUE_HEAD not in shapes:
        return shardings
    axes = models.param_logical_axes(cfg, "scalar")[VALUE_HEAD]
    return {**shardings, VALUE_HEAD: parallel.logical_shardings(axes, shapes[VALUE_HEAD], mesh, rules)}


def write_sample_table(path, step: int, tokenizer, rollout: Rollout, kl_coef: float, rows: int,
                       source_names: tuple[str, ...]) -> None:
    """A JSONL table of sample prompts, responses, scores (total and per source) and summed KL, one file
    per logged iteration."""
    tokens, attention, response_mask, scores, source_scores, sample_lp, ref_lp = (
        np.asarray(x) for x in parallel.host_values((rollout.tokens, rollout.attention_mask, rollout.response_mask,
                                                      rollout.scores, rollout.source_scores, rollout.sample_logprobs,
                                                      rollout.ref_logprobs)))
    if jax.process_index() != 0:
        return
    num_new = response_mask.shape[1]
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"ppo_step_{step:06d}.jsonl", "w") as f:
        for i in range(min(rows, tokens.shape[0])):
            prompt = tokens[i, :-num_new][attention[i, :-num_new]].tolist()
            response = tokens[i, -num_new:][response_mask[i]].tolist()
            kl = float(np.sum((sample_lp[i] - ref_lp[i])[response_mask[i]]))
            row = {"step": step, "prompt": tokenizer.decode(prompt), "response": tokenizer.decode(response),
                   "score": float(scores[i]), "source_scores": dict(zip(source_names, source_scores[i].tolist())),
                   "kl": kl, "kl_coef": kl_coef}
            f.write(json.dumps(row) + "\n")


def ppo_state_layout(policy: setup_lib.StateLayout, value: Optional[setup_lib.StateLayout],
                     replicated) -> tuple[PPOState, PPOState]:
    """(shardings, checkpoint restore target) of a `PPOState` from its networks' layouts (`value` None: no
    value network); the scalars `step` (int32) and `kl_coef` (float32) are replicated."""
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
    shardings = PPOState(step=replicated, policy=policy.state_shardings,
                         value=None if value is None else value.state_shardings, kl_coef=replicated)
    abstract = PPOState(step=scalar(jnp.int32), policy=policy.abstract_state,
                        value=None if value is None else value.abstract_state, kl_coef=scalar(jnp.float32))
    return shardings, abstract


@dataclasses.dataclass(frozen=True)
class PPOLayout:
    """The `PPOState` over the mesh: the policy's and the value network's layouts (with their optimizers;
    `value` None: no value network), the state's shardings and its checkpoint restore target."""

    policy: setup_lib.StateLayout
    value: Optional[setup_lib.StateLayout]
    shardings: PPOState
    abstract: PPOState

    @property
    def value_tx(self) -> Optional[optax.GradientTransformation]:
        return None if self.value is None else self.value.tx


def ppo_layout(config: ml_collections.ConfigDict, c: PPOConfig, cfg: models.ModelConfig, policy_params: Any,
               value_cfg: Optional[models.ModelConfig], value_params: Any, mesh, rules) -> PPOLayout:
    """The layout of the PPO state of `policy_params` and `value_params` (arrays or shapes; a value network
    when `value_cfg`), each network with its optimizer decaying over all minibatch updates of the run."""
    num_updates = config.num_steps * c.ppo_epochs * c.num_minibatches
    policy_layout = setup_lib.train_state_layout(
        make_optimizer(optim_config(config, num_updates)), policy_params, cfg, mesh, rules,
        param_shardings=policy_param_shardings(cfg, setup_lib.param_shapes(policy_params), mesh, rules))
    value_layout = None
    if value_cfg is not None:  # a separate value network with its own optimizer
        value_optim = config.optim.to_dict() | {"lr": config.value.lr}
        value_tx = make_optimizer(optim_config(ml_collections.ConfigDict({"optim": value_optim}), num_updates))
        value_layout = setup_lib.train_state_layout(value_tx, value_params, value_cfg, mesh, rules, head="scalar")
    shardings, abstract = ppo_state_layout(policy_layout, value_layout, parallel.replicated(mesh))
    return PPOLayout(policy=policy_layout, value=value_layout, shardings=shardings, abstract=abstract)


def jit_update(config: ml_collections.ConfigDict, c: PPOConfig, cfg: models.ModelConfig,
               value_cfg: Optional[models.ModelConfig], layout: PPOLayout, mesh) -> Callable:
    """`jax.jit` of the whole PPO update, the state donated and laid out by `layout`."""
    replicated = parallel.replicated(mesh)
    return jax.jit(make_ppo_update(cfg, value_cfg, layout.policy.tx, layout.value_tx, c,
                                   nan_at_step=config.debug.nan_at_step),
                   donate_argnums=0, out_shardings=(layout.shardings, replicated, replicated))


def sampling_settings(config: ml_collections.ConfigDict, eos_id: Optional[int], pad_id: int) -> SamplingSettings:
    """How the rollout samples responses (`config.rollout`)."""
    return SamplingSettings(max_new_tokens=config.rollout.max_new_tokens, temperature=config.rollout.temperature,
                            top_k=config.rollout.top_k, top_p=config.rollout.top_p, eos_id=eos_id,
                            pad_id=pad_id, dtype=config.rollout.dtype or None)


def rollout_scorer(config: ml_collections.ConfigDict, sources: RewardSources, ref_cfg: models.ModelConfig,
                   reward_fn) -> Callable[..., Rollout]:
    """The scorer of sampled responses (`rl.rollout.make_scorer`): reference logprobs, the rewards' weighted
    sum and the no-EOS penalty of `config.rollout`."""
    penalty = config.rollout.no_eos_penalty if config.rollout.penalize_no_eos else None
    return make_scorer(ref_cfg, reward_fn, temperature=config.rollout.temperature, no_eos_penalty_value=penalty,
                       weights=sources.weights)


class IterationCounter:
    """PPO iterations on the host: read from the state once, at the run's first iteration (the loop may
    have resumed at any step), then counted without waiting for the device."""

    def __init__(self):
        self.done: Optional[int] = None

    def next(self, state: PPOState) -> int:
        """The number (1-based) of the iteration about to update `state`."""
        if self.done is None:
            self.done = int(jax.device_get(state.step))
        self.done += 1
        return self.done


# evaluate(policy_cfg, policy LM params, iteration) -> metrics logged as eval/<name>
PolicyEvalFn = Callable[[models.ModelConfig, Any, int], dict[str, float]]


def train_ppo(config: ml_collections.ConfigDict, workdir: Union[str, os.PathLike],
              evaluate: Optional[PolicyEvalFn] = None) -> PPOState:
    """PPO (PPO-ptx when ptx.gamma > 0) as `config` says (experiments/configs/ppo.py), in `workdir`.

    Rerunning with the same config and workdir resumes from the latest checkpoint (policy, value
    model, optimizer states, KL coefficient, data position) and gives the result of an
    uninterrupted run. `evaluate` runs every `eval.every_steps` iterations and after the last one
    (0: never) on the policy's language model (the pipeline measures held-out pass rates along the
    run); eval.every_steps > 0 without it is refused.
    Returns the final `PPOState`.
    """
    config = resolve_dtypes(config)
    sources = check_config(config)  # a setting PPO would not honour stops here, before anything is written
    if config.eval.every_steps > 0 and evaluate is None:
        raise ValueError(f"ppo: eval.every_steps={config.eval.every_steps} needs an evaluate function "
                         "(train_ppo(..., evaluate=fn), as the pipeline passes); PPO has no evaluation of its own: "
                         "set eval.every_steps=0")
    c = ppo_config(config)
    run = setup_lib.start(config, workdir, num_keys=4, check_mesh=lambda mesh: check_batches(config, c, mesh))
    workdir, mesh, rules = run.workdir, run.mesh, run.rules
    init_rng, reward_rng, adapter_rng, train_rng = run.keys
    cfg, initial_params, tokenizer = load_initial_model(config.init, config.model, init_rng)
    reward_cfg, reward_params = load_reward(config, sources, cfg, initial_params, reward_rng)
    value_cfg, value_params, policy_params = init_value(config, cfg, initial_params, reward_cfg, reward_params)
    reward_fn, reward_params = reward_function(config, sources, cfg, reward_cfg, reward_params)
    ref_cfg, ref_params = reference_model(config, cfg, initial_params)
    cfg, policy_params, value_cfg, value_params = with_lora(config, cfg, policy_params, value_cfg, value_params,
                                                            adapter_rng)

    prompts_data = build_dataset(config.data, "prompts", workdir.data)
    prompt_cfg = PromptConfig(max_prompt_len=config.data.max_prompt_len, truncation=config.data.truncation,
                              chat_template=config.data.chat_template)
    prompt_source = prompts_data.source("train")
    prompts = prompt_loader(prompt_source, tokenizer, prompt_cfg,
                            loader_config(config.data, config.batch_size, config.seed, train=True), mesh)
    score_functions = FunctionScorer(sources.functions, tokenizer, prompt_source) if sources.functions else None
    text = None
    if c.gamma_ptx > 0:
        text_data = build_dataset(config.ptx.data, "pretraining_text", workdir.data)
        text = pretraining_loader(text_data.source("train"), tokenizer, PretrainingConfig(max_len=config.ptx.max_len),
                                  loader_config(config.ptx.data, config.ptx.batch_size, config.seed, train=True), mesh)

    num_steps = config.num_steps
    layout = ppo_layout(config, c, cfg, policy_params, value_cfg, value_params, mesh, rules)
    policy_layout, value_layout, shardings, abstract = layout.policy, layout.value, layout.shardings, layout.abstract
    replicated = parallel.replicated(mesh)
    build_state = lambda p, v: init_ppo_state(p, v, layout.policy.tx, layout.value_tx, config.kl.init_coef)

    if ref_params is not None:
        ref_params = jax.device_put(ref_params, parallel.param_shardings(ref_cfg, ref_params, mesh, rules))
    if reward_params is not None:
        reward_params = jax.device_put(reward_params, parallel.param_shardings(reward_cfg, reward_params, mesh, rules,
                                                                               head="scalar"))
    settings = sampling_settings(config, tokenizer.eos_id, tokenizer.pad_id)
    score = jax.jit(rollout_scorer(config, sources, ref_cfg, reward_fn))
    update = jit_update(config, c, cfg, value_cfg, layout, mesh)
    episode_rows = jax.jit(lambda batch: jax.tree.map(lambda x: jnp.repeat(x, c.group_size, axis=0), batch),
                           out_shardings=parallel.batch_sharding(mesh, 1))

    iterations = IterationCounter()

    def step_fn(state: PPOState, batch: dict, rng: jax.Array):
        sample_rng, update_rng = jax.random.split(rng)
        prompt_batch = batch["prompts"]  # each prompt group_size times, consecutive rows
        if c.group_size > 1:
            prompt_batch = episode_rows({k: prompt_batch[k] for k in ("tokens", "mask", "index")})
        with parallel.activation_sharding(mesh, rules):
            out = sample_responses(cfg, state.policy.params, prompt_batch["tokens"], prompt_batch["mask"],
                                   rng=sample_rng, settings=settings, mesh=mesh)
            function_scores = None if score_functions is None else score_functions(out, prompt_batch["index"])
            reference = lora_reference(state.policy.params) if ref_params is None else ref_params
            rollout = score(reference, reward_params, out, function_scores)
            iteration = iterations.next(state)
            state, metrics, _ = update(state, rollout, batch["ptx"], update_rng)
        if config.samples.every_steps and (iteration % config.samples.every_steps == 0 or iteration == num_steps):
            write_sample_table(workdir.samples, iteration, tokenizer, rollout, float(metrics["kl_coef"]),
                               config.samples.rows, sources.names)
        return state, metrics | source_metrics(sources.names, rollout.source_scores)

    def init_state() -> PPOState:
        params = jax.device_put(policy_params, policy_layout.param_shardings)
        values = None if value_params is None else jax.device_put(value_params, value_layout.param_shardings)
        return jax.jit(build_state, out_shardings=shardings)(params, values)

    def export(state: PPOState) -> None:
        export_model(workdir.export, cfg, lm_params(state.policy.params), tokenizer)

    def eval_fn(state: PPOState, step: int) -> dict[str, float]:
        return evaluate(cfg, lm_params(state.policy.params), step)

    train_iterator = PromptsAndText(iter(prompts), None if text is None else iter(text))
    return setup_lib.run_loop(run, num_steps, step_fn=step_fn, init_state=init_state, abstract_state=abstract,
                              train_iterator=train_iterator, rng=train_rng,
                              eval_fn=eval_fn if config.eval.every_steps > 0 else None,
                              export_fn=export if config.export else None, name="ppo")
