"""Optimizer factory on optax: AdamW with a decay mask, schedules, global-norm clipping."""

from __future__ import annotations

import dataclasses

import jax
import optax

SCHEDULES = ("constant", "linear", "cosine")


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
    """Clip by global norm, then AdamW with the schedule and the decay mask."""
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
    return adamw
