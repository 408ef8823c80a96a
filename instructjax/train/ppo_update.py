"""The PPO update of one rollout batch, compiled as ONE jit (docs/formulas.md, PPO update): old logprobs and
values recomputed with the training forward (unless nothing reads them, `PPOConfig.recomputes_old`),
per-token rewards, GAE, whitening, then
`ppo_epochs` x `num_minibatches` x microbatch accumulation as nested `lax.scan`s (purejaxrl-style),
with PPO-ptx gradients accumulated into the same policy update; the adaptive KL coefficient is
updated in the same function. The value model is a separate network with its own optimizer, or a
value head on the policy trunk (`value_cfg = value_tx = None`) trained with the policy (docs/formulas.md#value-model).

    update = make_ppo_update(policy_cfg, value_cfg, policy_tx, value_tx, PPOConfig(...))
    state, metrics, per_minibatch = update(state, rollout, ptx_batch_or_None, rng)

It reads top to bottom: the settings and the state, the loss pieces (`response_forward`, `ppo_batch`,
`loss_totals`, `minibatch_loss`), then the update as top-level functions in the order they run
(`recompute_old`, `epoch_step` -> `minibatch_step` -> `minibatch_gradients` / `apply_ppo_gradients`,
`old_kl_and_entropy`, `update_metrics`), all put together by `ppo_update`; `make_ppo_update` binds it to a `Learner`.
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
from instructjax.rl.ppo_losses import entropy_from_logits, explained_variance, policy_loss, value_loss
from instructjax.rl.per_token_rewards import token_rewards
from instructjax.rl.forwards import response_logits, response_logits_and_values, response_values
from instructjax.rl.rollout import Rollout
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

    @property
    def recomputes_old(self) -> bool:
        """Whether the update recomputes old logprobs (and values) before its first optimizer step. Not
        when nothing before that step reads them and it is the only one: one epoch of one minibatch (its
        own forward gives them, `fresh`), no value function (GAE reads old values), the KL in the loss (a
        KL reward reads old logprobs). The KL and entropy metrics then come from that forward."""
        return self.ppo_epochs > 1 or self.num_minibatches > 1 or self.uses_values or not self.kl_in_loss

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
    if not config.recomputes_old:  # the batch's KL and entropy metrics from the loss's forward
        totals |= {"episodes": jnp.asarray(mask.shape[0], jnp.float32),
                   "response_tokens": jnp.sum(mask).astype(jnp.float32)}
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
    where a separately compiled forward differs by float reassociation (~1e-7). Without a recompute
    (`config.recomputes_old` False) the stats also hold the metrics `kl` and `entropy` of `ppo_update`.
    """
    c = config
    mask = micro["response_mask"]
    logits, logp, values = response_forward(policy_cfg, value_cfg, c.temperature, params, micro["rollout"],
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
    if not c.recomputes_old:  # the update's only forward: its params are the old ones
        entropy = jnp.where(mask, entropy_from_logits(logits, c.temperature), 0.0)
        stats |= {"kl": jnp.sum(episode_kl(logp, micro["rollout"])) / totals["episodes"],
                  "entropy": jnp.sum(entropy) / totals["response_tokens"]}
    if c.gamma_ptx > 0:
        ptx = -ptx_logprob_sum(policy_cfg, params[0], micro["ptx"]) / jnp.maximum(totals["ptx_tokens"], 1.0)
        loss = loss + c.gamma_ptx * ptx
        stats["ptx_loss"] = ptx
    return loss, stats


@dataclasses.dataclass(frozen=True)
class Learner:
    """What a PPO update trains and how: the policy's and the value network's configs and optimizers
    (`value_cfg = value_tx = None`: a value head on the policy trunk), the settings, and the test hook
    `nan_at_step`."""

    policy_cfg: ModelConfig
    value_cfg: Optional[ModelConfig]
    policy_tx: optax.GradientTransformation
    value_tx: Optional[optax.GradientTransformation]
    config: PPOConfig
    nan_at_step: int = -1

    def __post_init__(self):
        if self.config.gamma_ptx < 0:
            raise ValueError(f"gamma_ptx must be >= 0, got {self.config.gamma_ptx}")
        if not self.config.uses_values and not self.shared_trunk:
            raise ValueError(f"advantage={self.config.advantage!r} uses no value function: pass value_cfg = "
                             "value_tx = None")
        if self.shared_trunk != (self.value_tx is None):
            raise ValueError("value_cfg and value_tx: both set (separate value network) or both None (value head on "
                             "the policy trunk)")

    @property
    def shared_trunk(self) -> bool:
        return self.value_cfg is None


def trained_params(learner: Learner, state: PPOState) -> tuple[Any, Any]:
    """(policy params, value params or None): what the loss differentiates."""
    return state.policy.params, None if learner.shared_trunk else state.value.params


def minibatch_rows(rows: int, config: PPOConfig) -> int:
    """Episodes per minibatch; a ValueError unless the batch splits into minibatches of whole microbatches."""
    if rows % config.num_minibatches:
        raise ValueError(f"{rows} episodes do not split into {config.num_minibatches} minibatches")
    mb_rows = rows // config.num_minibatches
    if mb_rows % config.microbatches:
        raise ValueError(f"minibatch of {mb_rows} episodes does not split into {config.microbatches} microbatches")
    return mb_rows


def old_forward(learner: Learner, params: tuple[Any, Any], rollout: Rollout
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(logprobs, values, entropies) [B, N] of the responses under `params`."""
    c = learner.config
    logits, logp, values = response_forward(learner.policy_cfg, learner.value_cfg, c.temperature, params, rollout,
                                            c.uses_values)
    return logp, values, entropy_from_logits(logits, c.temperature)


def recompute_old(learner: Learner, state: PPOState, rollout: Rollout, chunk: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`old_forward` of the current params (docs/formulas.md#old-logprobs) in chunks of `chunk` episodes,
    the microbatch size: the shapes of the update's forward, so that the first minibatch's ratio is exactly 1."""
    rows = rollout.response_mask.shape[0]
    chunks = jax.tree.map(lambda x: x.reshape(rows // chunk, chunk, *x.shape[1:]), rollout)
    outputs = jax.lax.map(functools.partial(old_forward, learner, trained_params(learner, state)), chunks)
    return jax.tree.map(lambda x: x.reshape(rows, *x.shape[2:]), outputs)


def ptx_minibatches(ptx_batch: Optional[dict], config: PPOConfig) -> Optional[dict]:
    """Packed pretraining rows [B_ptx, L] -> [M, B_ptx / M, L], one part per minibatch; None without PPO-ptx."""
    if config.gamma_ptx == 0:
        return None
    if ptx_batch is None:
        raise ValueError("gamma_ptx > 0 needs a ptx_batch")
    ptx_rows = ptx_batch["tokens"].shape[0]
    if ptx_rows % (config.num_minibatches * config.microbatches):
        raise ValueError(f"{ptx_rows} pretraining rows do not split into {config.num_minibatches} minibatches x "
                         f"{config.microbatches} microbatches")
    return jax.tree.map(lambda x: x.reshape(config.num_minibatches, ptx_rows // config.num_minibatches,
                                            *x.shape[1:]), ptx_batch)


def minibatch_indices(key: jax.Array, rows: int, num_minibatches: int) -> jax.Array:
    """int32 [M, rows / M]: a random permutation of the episodes, cut into minibatches."""
    return jax.random.permutation(key, rows).reshape(num_minibatches, rows // num_minibatches)


def select_minibatch(data: dict, index: jax.Array, ptx: Optional[dict]) -> dict:
    """The episodes `index` of the batch, with the minibatch's pretraining rows under "ptx" (PPO-ptx)."""
    minibatch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
    return minibatch if ptx is None else minibatch | {"ptx": ptx}


def microbatch_loss(learner: Learner, totals: dict, params: tuple[Any, Any], micro: dict,
                    rng: Optional[jax.Array]) -> tuple[jax.Array, dict]:
    """`minibatch_loss` as `accumulate_gradients` calls it (no key: dropout is off)."""
    del rng
    return minibatch_loss(learner.policy_cfg, learner.value_cfg, learner.config, params, micro, totals)


def minibatch_gradients(learner: Learner, state: PPOState, minibatch: dict, fresh: jax.Array
                        ) -> tuple[tuple[Any, Any], jax.Array, dict]:
    """((policy grads, value grads or None), loss, stats) of a minibatch, summed over its microbatches."""
    totals = loss_totals(minibatch, fresh, state.kl_coef, learner.config)
    loss_fn = poisoned_at(functools.partial(microbatch_loss, learner, totals), learner.nan_at_step, state.step + 1)
    return accumulate_gradients(loss_fn, trained_params(learner, state), minibatch, None, learner.config.microbatches)


def apply_ppo_gradients(learner: Learner, state: PPOState, grads: tuple[Any, Any]) -> tuple[PPOState, dict]:
    """(state, gradient norms) after one optimizer step of the policy and, if separate, the value network."""
    policy_grads, value_grads = grads
    norms = {"policy_grad_norm": optax.global_norm(policy_grads)}
    state = state.replace(policy=apply_gradients(state.policy, policy_grads, learner.policy_tx))
    if not learner.shared_trunk:
        norms["value_grad_norm"] = optax.global_norm(value_grads)
        state = state.replace(value=apply_gradients(state.value, value_grads, learner.value_tx))
    return state, norms


def minibatch_step(learner: Learner, data: dict, state: PPOState, xs: tuple) -> tuple[PPOState, dict]:
    """Scan body over a pass's minibatches: one optimizer step on minibatch (index, ptx part, fresh)."""
    index, ptx, fresh = xs
    grads, loss, stats = minibatch_gradients(learner, state, select_minibatch(data, index, ptx), fresh)
    state, norms = apply_ppo_gradients(learner, state, grads)
    return state, stats | norms | {"loss": loss}


def epoch_step(learner: Learner, data: dict, ptx: Optional[dict], state: PPOState, xs: tuple
               ) -> tuple[PPOState, dict]:
    """Scan body over epochs: one pass over the batch in the order of (key, epoch); the first minibatch of
    epoch 0 is `fresh` (its params are those of the recompute)."""
    key, epoch = xs
    m = learner.config.num_minibatches
    order = minibatch_indices(key, data["response_mask"].shape[0], m)
    fresh = (epoch == 0) & (jnp.arange(m) == 0)
    return jax.lax.scan(functools.partial(minibatch_step, learner, data), state, (order, ptx, fresh))


def episode_kl(logprobs: jax.Array, rollout: Rollout) -> jax.Array:
    """[B]: k1 KL to the reference summed over each episode's response tokens."""
    mask = rollout.response_mask
    return jnp.sum(jnp.where(mask, kl_penalty(logprobs, rollout.ref_logprobs, "k1"), 0.0), axis=-1)


def old_kl_and_entropy(old_logprobs: jax.Array, entropies: jax.Array, rollout: Rollout
                       ) -> tuple[jax.Array, jax.Array]:
    """The controller's and the log's KL (k1 summed over each episode, averaged over the batch, whatever
    estimator the rewards use) and the mean entropy of the response tokens, under the old params."""
    return jnp.mean(episode_kl(old_logprobs, rollout)), masked_mean(entropies, rollout.response_mask)


def update_metrics(config: PPOConfig, data: dict, rewards: jax.Array, entropy: jax.Array, mean_kl: jax.Array,
                   kl_coef: jax.Array, per_minibatch: dict) -> dict:
    """The scalars of docs/formulas.md#ppo-diagnostics: minibatch means, then the batch's."""
    rollout, mask, advantages, returns = data["rollout"], data["response_mask"], data["advantages"], data["returns"]
    old_values = data["old_values"]
    lengths = jnp.sum(mask, axis=-1)
    metrics = {k: jnp.mean(v) for k, v in per_minibatch.items()}
    metrics |= {
        "score": jnp.mean(rollout.scores), "raw_score": jnp.mean(rollout.raw_scores), "kl": mean_kl,
        "kl_coef": kl_coef, "entropy": entropy,
        "response_length": jnp.mean(lengths.astype(jnp.float32)),
        "eos_fraction": jnp.mean(rollout.ended.astype(jnp.float32)),
        "reward_total": jnp.mean(jnp.sum(rewards, axis=-1)),
        "advantage_mean": masked_mean(advantages, mask), "tokens": jnp.sum(lengths),
    }
    if config.uses_values:
        metrics |= {"explained_variance": explained_variance(old_values, returns, mask),
                    "values_mean": masked_mean(old_values, mask), "returns_mean": masked_mean(returns, mask)}
    return metrics


def ppo_update(learner: Learner, state: PPOState, rollout: Rollout, ptx_batch: Optional[dict], rng: jax.Array
               ) -> tuple[PPOState, dict, dict]:
    """One PPO iteration on a rollout batch (see `make_ppo_update`)."""
    c = learner.config
    rows = rollout.response_mask.shape[0]
    chunk = minibatch_rows(rows, c) // c.microbatches
    if c.recomputes_old:
        old_logprobs, old_values, entropies = recompute_old(learner, state, rollout, chunk)
    else:  # unread: the only optimizer step takes them from its own forward (`fresh`)
        old_logprobs, old_values = rollout.sample_logprobs, jnp.zeros_like(rollout.sample_logprobs)
    data, rewards = ppo_batch(rollout, old_logprobs, old_values, state.kl_coef, c)
    epochs = (jax.random.split(rng, c.ppo_epochs), jnp.arange(c.ppo_epochs))
    state, per_minibatch = jax.lax.scan(functools.partial(epoch_step, learner, data, ptx_minibatches(ptx_batch, c)),
                                        state, epochs)
    if c.recomputes_old:
        mean_kl, entropy = old_kl_and_entropy(old_logprobs, entropies, rollout)
    else:
        mean_kl, entropy = per_minibatch["kl"][0, 0], per_minibatch["entropy"][0, 0]
    metrics = update_metrics(c, data, rewards, entropy, mean_kl, state.kl_coef, per_minibatch)
    state = state.replace(step=state.step + 1, kl_coef=c.kl_controller(state.kl_coef).next_coef(mean_kl, rows))
    return state, metrics, per_minibatch


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
    return functools.partial(ppo_update, Learner(policy_cfg, value_cfg, policy_tx, value_tx, config, nan_at_step))


def init_ppo_state(policy_params: Any, value_params: Any, policy_tx: optax.GradientTransformation,
                   value_tx: Optional[optax.GradientTransformation], kl_coef: float) -> PPOState:
    """A fresh state; `value_params` None: the value head is on the policy trunk (in `policy_params`)."""
    value = None if value_params is None else TrainState.create(value_params, value_tx)
    return PPOState(step=jnp.zeros((), jnp.int32), policy=TrainState.create(policy_params, policy_tx),
                    value=value, kl_coef=jnp.asarray(kl_coef, jnp.float32))
