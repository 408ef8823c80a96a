"""Optimizer factory on optax: AdamW with a decay mask, schedules, global-norm clipping, skipping of
non-finite updates."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("constant", "linear", "cosine")
SKIPPED_COUNTER = "total_notfinite"  # optax.apply_if_finite's state field: updates skipped so far


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (InstructGPT SFT: lr 9.65e-6, cosine to 10%, no warmup)."""

    lr: float = 1e-5  # peak learning rate
    schedule: str = "cosine"  # "constant", "linear" (to final_lr_fraction) or "cosine" (to final_lr_fraction)
    warmup_steps: int = 0  # linear warmup from 0 to lr
    total_steps: int = 1000  # steps of the whole run (end of the decay)
    final_lr_fraction: float = 0.1  # decay floor as a fraction of lr
    b1: float = 0.9  # Adam beta1
    b2: float = 0.95  # Adam beta2 (InstructGPT PPO: 0.95)
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.0  # decoupled weight decay, not applied to norms and biases
    clip_norm: float = 1.0  # global gradient norm clip; 0 disables
    skip_nonfinite: int = 0  # updates with non-finite gradients skipped over the run (optax.apply_if_finite); 0: none


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Warmup then constant, linear or cosine decay to lr * final_lr_fraction at total_steps."""
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    floor = cfg.lr * cfg.final_lr_fraction
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, floor, decay_steps)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.final_lr_fraction)
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r}: expected one of {SCHEDULES}")
    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), decay], [cfg.warmup_steps])


def decay_mask(params):
    """True for matrices (decayed), False for norm scales and biases (vectors)."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW with the schedule and the decay mask; with `skip_nonfinite`, an
    update whose gradients hold a NaN or an infinity is skipped (params and moments kept, counted)."""
    tx = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                     weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    if cfg.skip_nonfinite:  # never applies a non-finite update; the loop stops after skip_nonfinite of them
        tx = optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)
    return tx


def skipped_updates(state: Any) -> Optional[jax.Array]:
    """The updates `optax.apply_if_finite` skipped so far in `state` (all its optimizers), a new array (it
    outlives the state, which the next step donates); None without it."""
    counts = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
              if path and getattr(path[-1], "name", None) == SKIPPED_COUNTER]
    return jnp.stack(counts).sum() if counts else None
