"""Per-device memory of a stage, planned ahead of time: the trainers' own jitted programs lowered and
compiled on abstract arrays (no parameter is materialised) over a mesh, read with XLA's memory analysis.

    plan = plan_stage("sft", config, cfg, mesh)   # or "ppo": rollout, scoring and update
    print(format_plan(plan, device_gb=80))

Resident bytes (params, optimizer state, frozen models) come from each leaf's shard shape; each
program's inputs, outputs and temporaries (activations, gradients, KV cache...) from
`compiled.memory_analysis()`. A program's peak is everything resident plus its other inputs, its
outputs not aliased to donated inputs, and its temporaries. docs/memory.md
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding

from instructjax import models, parallel
from instructjax.models import ModelConfig
from instructjax.models.functional import init_params
from instructjax.rl.sampler import sample_responses
from instructjax.rl.value_head import add_value_head
from instructjax.train import ppo, sft
from instructjax.train import setup as setup_lib
from instructjax.train import step as step_lib
from instructjax.train.config import lora_config, optim_config
from instructjax.train.optim import make_optimizer
from instructjax.train.ppo_rewards import reward_sources

STAGES = ("sft", "ppo")
GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Per-device bytes of one compiled program (`compiled.memory_analysis()`), and how many of its input
    bytes are resident state (params, optimizer state, frozen models) counted once in the plan."""

    name: str
    arguments: int  # every input buffer
    outputs: int  # every output buffer
    aliased: int  # outputs written into donated inputs
    temporaries: int  # activations, gradients, KV cache, scratch
    resident_arguments: int  # the part of `arguments` that is resident state

    @property
    def transient(self) -> int:
        """Bytes the program adds to the resident state while it runs."""
        return self.arguments - self.resident_arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Per-device bytes of a stage on a mesh: resident state and each program's transient bytes."""

    stage: str
    mesh_shape: tuple
    params: int  # trained parameters
    optimizer: int  # optimizer state (Adam moments, counters)
    frozen: int  # frozen models (PPO's reference and reward model)
    programs: tuple  # ProgramMemory, in the order they run

    @property
    def resident(self) -> int:
        return self.params + self.optimizer + self.frozen

    @property
    def peak(self) -> int:
        """The largest footprint of any program: resident state + its transient bytes."""
        return self.resident + max(p.transient for p in self.programs)


def shard_bytes(tree: Any) -> int:
    """Per-device bytes of a tree of `ShapeDtypeStruct`s with shardings (the first device's shard of each leaf)."""
    def leaf(x) -> int:
        shape = x.sharding.shard_shape(x.shape) if isinstance(x.sharding, NamedSharding) else x.shape
        return math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return sum(leaf(x) for x in jax.tree.leaves(tree))


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """`ShapeDtypeStruct`s of `shapes` laid out by the matching tree of `shardings`."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def planned_model(config: ml_collections.ConfigDict, preset: str = "") -> ModelConfig:
    """The model of a plan: `preset`, else the config's random preset or the embedded SmolLM2 (init.source
    "default"), with `config.model`'s settings and `config.lora`'s adapters; other init sources need a preset
    (nothing is read)."""
    name = preset or {"random": config.init.preset, "default": "smollm2_135m"}.get(config.init.source)
    if not name:
        raise ValueError(f"init.source={config.init.source!r}: give the model's shape as a preset "
                         "(instructjax.models.config.PRESETS)")
    return models.get_preset(name).replace(**config.model, lora=lora_config(config))


def outputs(compiled: Any) -> Any:
    """`ShapeDtypeStruct`s (with shardings) of a compiled program's outputs: the next program's inputs."""
    return with_shardings(compiled.out_info, compiled.output_shardings)


def abstract_params(cfg: ModelConfig, head: str = "lm") -> Any:
    """Param shapes of `cfg` in its param dtype, as `with_overrides` casts loaded params (nothing materialised)."""
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), head=head))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(cfg.param_dtype)), shapes)


def abstract_key(mesh: Mesh) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=parallel.replicated(mesh))


def text_batch(rows: int, length: int, mesh: Mesh) -> dict:
    """A batch of SFT / pretraining rows (`sft_loader`, `pretraining_loader`) split over the batch axes."""
    sharding = parallel.batch_sharding(mesh, 2)
    dtypes = {"tokens": jnp.int32, "positions": jnp.int32, "segment_ids": jnp.int32, "attention_mask": bool,
              "loss_mask": bool}
    return {k: jax.ShapeDtypeStruct((rows, length), d, sharding=sharding) for k, d in dtypes.items()}


def program_memory(name: str, compiled: Any, resident_arguments: int) -> ProgramMemory:
    """The per-device memory analysis of a compiled program."""
    m = compiled.memory_analysis()
    return ProgramMemory(name=name, arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                         aliased=m.alias_size_in_bytes, temporaries=m.temp_size_in_bytes,
                         resident_arguments=resident_arguments)


def state_bytes(layout: setup_lib.StateLayout) -> tuple[int, int]:
    """(params, optimizer state + step) per-device bytes of a train state layout."""
    params = shard_bytes(layout.abstract_state.params)
    return params, shard_bytes(layout.abstract_state) - params


def sft_step_program(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh
                     ) -> tuple[setup_lib.StateLayout, Any, tuple]:
    """(state layout, jitted SFT train step, its abstract arguments: state, a batch of batch_size rows of
    data.max_len tokens, a key), as `train_sft` builds the step."""
    rules = tuple(config.parallel.rules)
    optim = optim_config(config, max(config.num_steps, 1))
    layout = setup_lib.train_state_layout(make_optimizer(optim), abstract_params(cfg), cfg, mesh, rules)
    jitted = step_lib.jit_step(sft.sft_train_step(config, cfg, layout.tx, optim), layout.state_shardings, mesh)
    args = (layout.abstract_state, text_batch(config.batch_size, config.data.max_len, mesh), abstract_key(mesh))
    return layout, jitted, args


def sft_plan(layout: setup_lib.StateLayout, compiled: Any, mesh: Mesh) -> MemoryPlan:
    """The plan of a compiled SFT step (`sft_step_program`) and its state layout."""
    params, optimizer = state_bytes(layout)
    step = program_memory("train step", compiled, params + optimizer)
    return MemoryPlan("sft", tuple(mesh.devices.shape), params, optimizer, 0, (step,))


def plan_sft(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh) -> MemoryPlan:
    """The SFT train step of `config` (batch_size rows of data.max_len tokens, microbatches) on `mesh`."""
    layout, jitted, args = sft_step_program(config, cfg, mesh)
    with parallel.activation_sharding(mesh, tuple(config.parallel.rules)):
        compiled = jitted.lower(*args).compile()
    return sft_plan(layout, compiled, mesh)


def ppo_networks(config: ml_collections.ConfigDict, c: ppo.PPOConfig, cfg: ModelConfig
                 ) -> tuple[Any, Optional[ModelConfig], Any]:
    """(policy param shapes, value cfg, value param shapes) as `ppo.init_value` lays them out, a separate
    value network taken to have the policy's shape (a reward model's own size is not known here)."""
    policy = abstract_params(cfg)
    if not c.uses_values:
        return policy, None, None
    if config.value.init == "shared":
        return jax.eval_shape(lambda p: add_value_head(cfg, p), policy), None, None
    return policy, cfg, abstract_params(cfg, head="scalar")


def traced(make: Callable[[Any], tuple[Any, Any]], params: Any) -> tuple[Any, Any]:
    """`make(params) -> (anything, params)` run on param shapes: (its first result, the shapes of its params)."""
    made = []

    def params_only(p):
        first, out = make(p)
        made.append(first)
        return out

    shapes = jax.eval_shape(params_only, params)
    return made[0], shapes


def sharded(cfg: ModelConfig, shapes: Any, mesh: Mesh, rules, head: str = "lm") -> Any:
    """Param shapes of `cfg` laid out over the mesh as the trainers place them (None stays None)."""
    if shapes is None:
        return None
    return with_shardings(shapes, parallel.param_shardings(cfg, shapes, mesh, rules, head=head))


@dataclasses.dataclass(frozen=True)
class PPOPrograms:
    """PPO's three compiled programs of one iteration and the abstract arrays they start from."""

    layout: ppo.PPOLayout  # the PPOState (policy, value network, optimizers) over the mesh
    ref: Any  # the reference model's params (with LoRA: the policy's base weights, not a copy)
    frozen: int  # per-device bytes of the frozen models held beside the trained networks
    reward: Any  # the frozen reward model's params (None: no reward model)
    prompts: tuple  # (tokens int32 [rows, P], mask bool [rows, P])
    function_scores: Any  # float32 [F, rows] of reward functions (None: none)
    ptx: Any  # a PPO-ptx batch (None: plain PPO)
    rollout: Any  # (policy params, tokens, mask, key) -> SampleOutput
    scoring: Any  # (ref, reward, SampleOutput, function scores) -> Rollout
    update: Any  # (PPOState, Rollout, ptx, key) -> (PPOState, metrics, per-minibatch metrics)


def ppo_programs(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh) -> PPOPrograms:
    """The rollout (sampling with a KV cache), the scoring (reference logprobs, reward model) and the whole
    update of `config` on `mesh`, as `train_ppo` builds them; the reward model has the policy's shape."""
    rules = tuple(config.parallel.rules)
    c, sources = ppo.ppo_config(config), reward_sources(config.reward)
    policy, value_cfg, value = ppo_networks(config, c, cfg)
    layout = ppo.ppo_layout(config, c, cfg, policy, value_cfg, value, mesh, rules)
    base_cfg = cfg.replace(lora=None)
    ref_cfg, ref = traced(lambda p: ppo.reference_model(config, base_cfg, p), abstract_params(base_cfg))
    reward_fn, reward = traced(lambda p: ppo.reward_function(config, sources, cfg, cfg, p),
                               abstract_params(cfg, "scalar") if sources.has_reward_model else None)
    rows = config.batch_size * c.group_size
    prompts = tuple(jax.ShapeDtypeStruct((rows, config.data.max_prompt_len), d,
                                         sharding=parallel.batch_sharding(mesh, 2)) for d in (jnp.int32, bool))
    scores = None if not sources.functions else jax.ShapeDtypeStruct(
        (len(sources.functions), rows), jnp.float32, sharding=parallel.replicated(mesh))
    settings = ppo.sampling_settings(config, 0, 0)

    def rollout(params, tokens, mask, rng):
        return sample_responses(cfg, params, tokens, mask, rng=rng, settings=settings, mesh=mesh)

    score = ppo.rollout_scorer(config, sources, ref_cfg, reward_fn)
    ptx = text_batch(config.ptx.batch_size, config.ptx.max_len, mesh) if c.gamma_ptx > 0 else None
    ref, reward = sharded(ref_cfg, ref, mesh, rules), sharded(cfg, reward, mesh, rules, "scalar")
    key, frozen = abstract_key(mesh), shard_bytes(ref) + shard_bytes(reward)
    if ref is None:  # LoRA: the reference is the policy's base weights, resident already
        ref = ppo.lora_reference(layout.abstract.policy.params)
    with parallel.activation_sharding(mesh, rules):
        sampled = jax.jit(rollout).lower(layout.abstract.policy.params, *prompts, key).compile()
        scored = jax.jit(score).lower(ref, reward, outputs(sampled), scores).compile()
        updated = ppo.jit_update(config, c, cfg, value_cfg, layout, mesh).lower(layout.abstract, outputs(scored), ptx,
                                                                                 key).compile()
    return PPOPrograms(layout=layout, ref=ref, frozen=frozen, reward=reward, prompts=prompts, function_scores=scores,
                       ptx=ptx, rollout=sampled, scoring=scored, update=updated)


def ppo_plan(p: PPOPrograms, mesh: Mesh) -> MemoryPlan:
    """The plan of PPO's compiled programs: the policy and value network trained, the reference and reward
    model frozen."""
    policy_params, optimizer = state_bytes(p.layout.policy)
    value_params, value_optimizer = state_bytes(p.layout.value) if p.layout.value is not None else (0, 0)
    programs = (program_memory("rollout", p.rollout, policy_params),
                program_memory("scoring", p.scoring, shard_bytes(p.ref) + shard_bytes(p.reward)),
                program_memory("update", p.update, shard_bytes(p.layout.abstract)))
    return MemoryPlan("ppo", tuple(mesh.devices.shape), policy_params + value_params, optimizer + value_optimizer,
                      p.frozen, programs)


def plan_ppo(config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh) -> MemoryPlan:
    """PPO's three programs of one iteration on `mesh` (`ppo_programs`)."""
    return ppo_plan(ppo_programs(config, cfg, mesh), mesh)


def plan_stage(stage: str, config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh) -> MemoryPlan:
    """The memory plan of `stage` ("sft" or "ppo"; GRPO / RLOO configs are "ppo" configs)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: expected one of {STAGES}")
    return plan_sft(config, cfg, mesh) if stage == "sft" else plan_ppo(config, cfg, mesh)


def format_plan(plan: MemoryPlan, device_gb: float) -> str:
    """A table of per-device bytes (resident state, each program's transient bytes and peak, in GiB, or
    MiB below 1 GiB) and the verdict against a device of `device_gb` GiB."""
    unit, scale = ("GiB", GiB) if plan.peak >= GiB else ("MiB", 1024 ** 2)
    size = lambda b: f"{b / scale:10.3f}"
    lines = [f"stage {plan.stage}, mesh (data, fsdp, tensor) = {plan.mesh_shape}, per device ({unit}):",
             f"  params {size(plan.params)}   optimizer {size(plan.optimizer)}   frozen models {size(plan.frozen)}",
             f"  {'program':<11} {'inputs':>10} {'outputs':>10} {'temp':>10} {'peak':>10}"]
    for p in plan.programs:
        lines.append(f"  {p.name:<11} {size(p.arguments - p.resident_arguments)} {size(p.outputs - p.aliased)} "
                     f"{size(p.temporaries)} {size(plan.resident + p.transient)}")
    fits = plan.peak <= device_gb * GiB
    lines.append(f"peak {plan.peak / GiB:.3f} GiB of {device_gb:g} GiB: {'fits' if fits else 'does not fit'}")
    return "\n".join(lines)
