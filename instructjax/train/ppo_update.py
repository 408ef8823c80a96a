"""The PPO update of one rollout batch, compiled as ONE jit (docs/formulas.md, PPO update): old logprobs and
values recomputed with the training forward, per-token rewards, GAE, whitening, then
`ppo_epochs` x `num_minibatches` x microbatch accumulation as nested `lax.scan`s (purejaxrl-style),
with PPO-ptx gradients accumulated into the same policy update; the adaptive KL coefficient is
updated in the same function. The value model is a separate network with its own optimizer, or a
value head on the policy trunk (`value_cfg = value_tx = None`) trained with the policy (docs/formulas.md#value-model).

    update = make_ppo_update(policy_cfg, value_cfg, policy_tx, value_tx, PPOConfig(...))
    state, metrics, per_minibatch = update(state, rollout, ptx_batch_or_None, rng)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from instructjax.losses import next_token_targets, token_logprobs
from instructjax.models import ModelConfig, Transformer
from instructjax.rl.advantages import gae, group_advantages, masked_mean, rloo_advantages, whiten
from instructjax.rl.kl import AdaptiveKLController, FixedKLController, KLController, kl_penalty
from instructjax.rl.ppo import entropy_from_logits, explained_variance, policy_loss, value_loss
from instructjax.rl.rewards import token_rewards
from instructjax.rl.rollout import Rollout, response_logits, response_logits_and_values, response_values
from instructjax.train.state import TrainState
from instructjax.train.step import accumulate_gradients, apply_gradients, poisoned_at


ADVANTAGES = ("gae", "grpo", "drgrpo", "rloo")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Settings of one PPO update (defaults: InstructGPT, docs/formulas.md#instructgpt-defaults)."""

    ppo_epochs: int = 1  # passes over the rollout batch (Ziegler: 4)
    num_minibatches: int = 8  # minibatches per pass (512 episodes / 64)
    microbatches: int = 1  # gradient accumulation inside each minibatch
    clip_eps: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # value clip c
    vf_coef: float = 1.0  # value-loss weight (separate value network: its own optimizer; shared trunk: 0.1)
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    temperature: float = 1.0  # sampling temperature, also in the training forward (docs/formulas.md#tempered-logprobs)
    kl_kind: str = "k1"  # k1 | k2 | k3 per-token KL estimator (in the reward, or in the loss)
    kl_in_loss: bool = False  # beta * KL as a loss term on the policy's own logprobs (GRPO, k3) instead of a reward
    whiten_rewards: bool = False  # reward whitening with shift_mean=False (docs/formulas.md#whitening)
    whiten_advantages: bool = True  # advantage whitening (docs/formulas.md#whitening)
    gamma_ptx: float = 0.0  # PPO-ptx coefficient (InstructGPT: 27.8); 0: plain PPO
    adaptive_kl: bool = False  # Ziegler's adaptive controller instead of a fixed beta
    kl_target: float = 6.0  # adaptive controller target KL (nats per episode)
    kl_horizon: float = 10000.0  # adaptive controller horizon (episodes)
    advantage: str = "gae"  # gae (value function) | grpo | drgrpo | rloo (group baselines, no value function)
    group_size: int = 1  # consecutive rollout rows sampled from the same prompt (group baselines: >= 2)

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage={self.advantage!r}: expected one of {ADVANTAGES}")
        if self.advantage != "gae" and self.group_size < 2:
            raise ValueError(f"advantage={self.advantage!r} needs group_size >= 2 samples per prompt, got "
                             f"{self.group_size}")

    @property
    def uses_values(self) -> bool:
        """GAE needs a value function; the group baselines do not."""
        return self.advantage == "gae"

    def kl_controller(self, kl_coef: float | jax.Array) -> KLController:
        """The controller that moves `PPOState.kl_coef` after each rollout batch, at `kl_coef`."""
        if self.adaptive_kl:
            return AdaptiveKLController(kl_coef, self.kl_target, self.kl_horizon)
        return FixedKLController(kl_coef)


@flax.struct.dataclass
class PPOState:
    """Everything a PPO iteration updates; a checkpoint holds exactly this."""

    step: jax.Array  # int32 []: PPO iterations (rollout batches) done
    policy: TrainState  # policy params + optimizer state
    value: Optional[TrainState]  # value-model params + optimizer state; None: value head on the policy trunk
    kl_coef: jax.Array  # float32 []: the KL coefficient beta (the KL controller's state)


def ptx_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """(targets, mask) [B, L] of packed pretraining rows: position i predicts token i + 1 of the same segment."""
    targets, mask = next_token_targets(batch["tokens"], batch["loss_mask"].astype(bool))
    segments = batch["segment_ids"]
    next_segments, _ = next_token_targets(segments, mask)
    return targets, mask & (segments == next_segments)  # the last position's mask is already False


def ptx_logprob_sum(cfg: ModelConfig, params: Any, batch: dict) -> jax.Array:
    """Sum of log pi(x) over the next-token targets of packed pretraining rows (docs/formulas.md#ppo-ptx)."""
    logits = Transformer(cfg).apply({"params": params}, batch["tokens"], batch["positions"], batch["attention_mask"],
                                    segment_ids=batch["segment_ids"], deterministic=True)
    targets, mask = ptx_targets(batch)
    return jnp.sum(jnp.where(mask, token_logprobs(logits, targets), 0.0))


def response_forward(policy_cfg: ModelConfig, value_cfg: Optional[ModelConfig], temperature: float,
                     params: tuple[Any, Any], rollout: Rollout, with_values: bool = True
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logits [B, N, V], logprobs [B, N], values [B, N]) of the response tokens in the training forward
    (dropout off). `params` is (policy, value); `value_cfg` None: the value head is on the policy trunk
    (`ij.rl.add_value_head`) and one trunk forward gives both; `with_values=False`: no value function
    (group baselines), values are 0."""
    policy_params, value_params = params
    tokens, attention_mask, mask = rollout.tokens, rollout.attention_mask, rollout.response_mask
    if not with_values:
        logits = response_logits(policy_cfg, policy_params, tokens, attention_mask, mask.shape[1])
        values = jnp.zeros(mask.shape, jnp.float32)
    elif value_cfg is None:
        logits, values = response_logits_and_values(policy_cfg, policy_params, tokens, attention_mask, mask)
    else:
        logits = response_logits(policy_cfg, policy_params, tokens, attention_mask, mask.shape[1])
        values = response_values(value_cfg, value_params, tokens, attention_mask, mask)
    logp = jnp.where(mask, token_logprobs(logits, tokens[:, -mask.shape[1]:], temperature), 0.0)
    return logits, logp, values


def sequence_advantages(sequence_rewards: jax.Array, config: PPOConfig) -> jax.Array:
    """float32 [B]: the group-baseline advantage of each episode's total reward (GRPO, Dr.GRPO, RLOO)."""
    if config.advantage == "rloo":
        return rloo_advantages(sequence_rewards, config.group_size)
    return group_advantages(sequence_rewards, config.group_size, scale=config.advantage == "grpo")


def ppo_batch(rollout: Rollout, old_logprobs: jax.Array, old_values: jax.Array, kl_coef: jax.Array,
              config: PPOConfig) -> tuple[dict, jax.Array]:
    """(batch, rewards [B, N]): the per-episode arrays the minibatches are drawn from
    (rollout, mask, old logprobs and values, advantages, returns) after per-token rewards with the KL
    penalty (Ziegler et al. 2019), optional reward whitening, then GAE (Schulman et al. 2016) and
    optional advantage whitening, or a group baseline of each episode's summed reward, the same
    advantage for every token of the response (`config.advantage` grpo | drgrpo | rloo)."""
    mask = rollout.response_mask
    reward_kl_coef = 0.0 if config.kl_in_loss else kl_coef
    rewards, _ = token_rewards(rollout.scores, old_logprobs, rollout.ref_logprobs, mask, reward_kl_coef,
                               config.kl_kind)
    if config.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    if config.uses_values:
        advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)
    else:
        episode_advantages = sequence_advantages(jnp.sum(rewards, axis=-1), config)
        advantages = jnp.where(mask, episode_advantages[:, None], 0.0)
        returns = jnp.zeros_like(advantages)
    batch = {"rollout": rollout, "response_mask": mask, "old_logprobs": old_logprobs, "old_values": old_values,
             "advantages": advantages, "returns": returns}
    return batch, rewards


def loss_totals(minibatch: dict, fresh: jax.Array | bool, kl_coef: jax.Array, config: PPOConfig) -> dict:
    """What `minibatch_loss` normalises by over a whole minibatch (its microbatches share it): valid
    response tokens, PPO-ptx target tokens; `fresh`: the params are still those of the recompute;
    `kl_coef`: beta of the KL loss term."""
    mask = minibatch["response_mask"]
    # Dr.GRPO: the token sum over a constant (every row's full response budget), not over the valid tokens
    tokens = mask.size if config.advantage == "drgrpo" else jnp.sum(mask)
    totals = {"tokens": jnp.asarray(tokens, jnp.float32), "fresh": fresh, "kl_coef": kl_coef}
    if config.gamma_ptx > 0:
        totals["ptx_tokens"] = jnp.sum(ptx_targets(minibatch["ptx"])[1]).astype(jnp.float32)
    return totals


def minibatch_loss(policy_cfg: ModelConfig, value_cfg: Optional[ModelConfig], config: PPOConfig,
                   params: tuple[Any, Any], micro: dict, totals: dict) -> tuple[jax.Array, dict]:
    """(loss, stats) of (a microbatch of) a minibatch: clipped policy loss + vf_coef * clipped value loss
    (Schulman et al. 2017; GAE only), + beta * KL to the reference (`kl_in_loss`, Shao et al. 2024),
    + gamma_ptx * the PPO-ptx loss (Ouyang et al. 2022). Weighted so that the
    sum over a minibatch's microbatches is that minibatch's loss; `params` is (policy, value or None).

    With `totals["fresh"]` the old logprobs / values are this forward's own (stop-gradient): the
    params are those of the recompute (first minibatch of the first epoch), so the ratio is exactly 1,
    where a separately compiled forward differs by float reassociation (~1e-7).
    """
    c = config
    mask = micro["response_mask"]
    _, logp, values = response_forward(policy_cfg, value_cfg, c.temperature, params, micro["rollout"],
                                       c.uses_values)
    fresh = totals["fresh"]
    old_logp = jnp.where(fresh, jax.lax.stop_gradient(logp), micro["old_logprobs"])
    old_values = jnp.where(fresh, jax.lax.stop_gradient(values), micro["old_values"])
    pg, pg_stats = policy_loss(logp, old_logp, micro["advantages"], mask, c.clip_eps)
    share = jnp.sum(mask) / jnp.maximum(totals["tokens"], 1.0)
    loss, stats = share * pg, {"pg_loss": pg, **pg_stats}
    if c.kl_in_loss:  # differentiated through the policy's logprobs, unlike the reward penalty
        kl = masked_mean(kl_penalty(logp, micro["rollout"].ref_logprobs, c.kl_kind), mask)
        loss, stats = loss + share * totals["kl_coef"] * kl, {**stats, "kl_loss": kl}
    if c.uses_values:
        vf, vf_stats = value_loss(values, old_values, micro["returns"], mask, c.value_clip)
        loss, stats = loss + share * c.vf_coef * vf, {**stats, "value_loss": vf, **vf_stats}
    stats = {k: share * v for k, v in stats.items()}
    if c.gamma_ptx > 0:
        ptx = -ptx_logprob_sum(policy_cfg, params[0], micro["ptx"]) / jnp.maximum(totals["ptx_tokens"], 1.0)
        loss = loss + c.gamma_ptx * ptx
        stats["ptx_loss"] = ptx
    return loss, stats


def make_ppo_update(policy_cfg: ModelConfig, value_cfg: Optional[ModelConfig], policy_tx: optax.GradientTransformation,
                    value_tx: Optional[optax.GradientTransformation], config: PPOConfig, *, nan_at_step: int = -1):
    """A pure `update(state, rollout, ptx_batch, rng) -> (state, metrics, per_minibatch)`.

    `value_cfg` and `value_tx` None: the value head is on the policy trunk (policy params from
    `ij.rl.add_value_head`, `state.value` None): one forward per minibatch gives logprobs and values,
    and `policy loss + vf_coef * value loss` is one update of the policy optimizer.

    `ptx_batch` (None when gamma_ptx is 0): packed pretraining rows [B_ptx, L] split evenly over the
    minibatches (and microbatches). `metrics`: scalars of docs/formulas.md#ppo-diagnostics; `per_minibatch`: [E, M]
    arrays of the policy statistics in execution order (the first is the first minibatch of the
    first epoch: ratio 1, approx KL 0, clip fraction 0). `config.kl_controller` moves the KL
    coefficient by the batch's mean episode KL. `nan_at_step` (a test hook; -1 = off): every minibatch
    loss of that iteration (1-based) is multiplied by NaN (`ij.train.step.poisoned_at`).
    """
    c = config
    if c.gamma_ptx < 0:
        raise ValueError(f"gamma_ptx must be >= 0, got {c.gamma_ptx}")
    shared = value_cfg is None
    if not c.uses_values and not shared:
        raise ValueError(f"advantage={c.advantage!r} uses no value function: pass value_cfg = value_tx = None")
    if shared != (value_tx is None):
        raise ValueError("value_cfg and value_tx: both set (separate value network) or both None (value head on "
                         "the policy trunk)")
    forward = functools.partial(response_forward, policy_cfg, value_cfg, c.temperature, with_values=c.uses_values)
    micro_loss = functools.partial(minibatch_loss, policy_cfg, value_cfg, c)

    def trained_params(state: PPOState):
        """(policy params, value params or None): what the loss differentiates."""
        return state.policy.params, None if shared else state.value.params

    def minibatch_step(state: PPOState, minibatch: dict, microbatches: int, fresh: jax.Array):
        totals = loss_totals(minibatch, fresh, state.kl_coef, c)
        loss_fn = poisoned_at(micro_loss, nan_at_step, state.step + 1)
        (policy_grads, value_grads), loss, stats = accumulate_gradients(
            lambda params, m, _: loss_fn(params, m, totals), trained_params(state), minibatch, None, microbatches)
        return loss, stats, policy_grads, value_grads

    def update(state: PPOState, rollout: Rollout, ptx_batch: Optional[dict], rng: jax.Array):
        mask = rollout.response_mask
        rows = mask.shape[0]
        if rows % c.num_minibatches:
            raise ValueError(f"{rows} episodes do not split into {c.num_minibatches} minibatches")
        mb_rows = rows // c.num_minibatches
        if mb_rows % c.microbatches:
            raise ValueError(f"minibatch of {mb_rows} episodes does not split into {c.microbatches} microbatches")
        # docs/formulas.md#old-logprobs: old logprobs and values from the training forward of the current params
        # in chunks of the microbatch size: the same shapes as the update's forward, so that the
        # first minibatch's ratio is exactly 1
        chunk = mb_rows // c.microbatches

        def old_forward(part):
            logits, logp, values = forward(trained_params(state), part)
            return logp, values, entropy_from_logits(logits, c.temperature)

        chunks = jax.tree.map(lambda x: x.reshape(rows // chunk, chunk, *x.shape[1:]), rollout)
        old_logprobs, old_values, entropies = jax.tree.map(lambda x: x.reshape(rows, *x.shape[2:]),
                                                           jax.lax.map(old_forward, chunks))
        entropy = masked_mean(entropies, mask)
        data, rewards = ppo_batch(rollout, old_logprobs, old_values, state.kl_coef, c)
        advantages, returns = data["advantages"], data["returns"]
        ptx = None
        if c.gamma_ptx > 0:
            if ptx_batch is None:
                raise ValueError("gamma_ptx > 0 needs a ptx_batch")
            ptx_rows = ptx_batch["tokens"].shape[0]
            if ptx_rows % (c.num_minibatches * c.microbatches):
                raise ValueError(f"{ptx_rows} pretraining rows do not split into {c.num_minibatches} minibatches x "
                                 f"{c.microbatches} microbatches")
            ptx = jax.tree.map(lambda x: x.reshape(c.num_minibatches, ptx_rows // c.num_minibatches, *x.shape[1:]),
                               ptx_batch)

        def minibatch_body(state: PPOState, xs):
            index, ptx_part, fresh = xs
            minibatch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
            if ptx_part is not None:
                minibatch["ptx"] = ptx_part
            loss, stats, policy_grads, value_grads = minibatch_step(state, minibatch, c.microbatches, fresh)
            stats["policy_grad_norm"] = optax.global_norm(policy_grads)
            stats["loss"] = loss
            state = state.replace(policy=apply_gradients(state.policy, policy_grads, policy_tx))
            if not shared:
                stats["value_grad_norm"] = optax.global_norm(value_grads)
                state = state.replace(value=apply_gradients(state.value, value_grads, value_tx))
            return state, stats

        def epoch_body(state: PPOState, xs):
            key, epoch = xs
            order = jax.random.permutation(key, rows).reshape(c.num_minibatches, mb_rows)
            fresh = (epoch == 0) & (jnp.arange(c.num_minibatches) == 0)
            return jax.lax.scan(minibatch_body, state, (order, ptx, fresh))

        state, per_minibatch = jax.lax.scan(epoch_body, state,
                                            (jax.random.split(rng, c.ppo_epochs), jnp.arange(c.ppo_epochs)))
        # the controller's and the log's KL: k1 summed over each episode, whatever estimator the rewards use
        episode_kl = jnp.sum(jnp.where(mask, kl_penalty(old_logprobs, rollout.ref_logprobs, "k1"), 0.0), axis=-1)
        mean_kl = jnp.mean(episode_kl)
        new_kl_coef = c.kl_controller(state.kl_coef).next_coef(mean_kl, rows)
        lengths = jnp.sum(mask, axis=-1)
        metrics = {k: jnp.mean(v) for k, v in per_minibatch.items()}
        metrics |= {
            "score": jnp.mean(rollout.scores), "raw_score": jnp.mean(rollout.raw_scores), "kl": mean_kl,
            "kl_coef": state.kl_coef, "entropy": entropy,
            "response_length": jnp.mean(lengths.astype(jnp.float32)),
            "eos_fraction": jnp.mean(rollout.ended.astype(jnp.float32)),
            "reward_total": jnp.mean(jnp.sum(rewards, axis=-1)),
            "advantage_mean": masked_mean(advantages, mask), "tokens": jnp.sum(lengths),
        }
        if c.uses_values:
            metrics |= {"explained_variance": explained_variance(old_values, returns, mask),
                        "values_mean": masked_mean(old_values, mask), "returns_mean": masked_mean(returns, mask)}
        state = state.replace(step=state.step + 1, kl_coef=new_kl_coef)
        return state, metrics, per_minibatch

    return update


def init_ppo_state(policy_params: Any, value_params: Any, policy_tx: optax.GradientTransformation,
                   value_tx: Optional[optax.GradientTransformation], kl_coef: float) -> PPOState:
    """A fresh state; `value_params` None: the value head is on the policy trunk (in `policy_params`)."""
    value = None if value_params is None else TrainState.create(value_params, value_tx)
    return PPOState(step=jnp.zeros((), jnp.int32), policy=TrainState.create(policy_params, policy_tx),
                    value=value, kl_coef=jnp.asarray(kl_coef, jnp.float32))
