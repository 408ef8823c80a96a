"""Per-token KL estimators (Schulman 2020) and the KL coefficient controllers (Ziegler et al. 2019);
docs/formulas.md#kl-estimators, #kl-controllers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_CONTROLLERS = ("fixed", "adaptive")  # config.kl.controller: FixedKLController, AdaptiveKLController


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str = "k1") -> jax.Array:
    """Estimate of KL(policy || reference) per sampled token: k1, k2 or k3 (Schulman's estimators)."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * jnp.square(log_ratio)
    if kind == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_penalty kind={kind!r}: expected one of {KL_ESTIMATORS}")


@dataclasses.dataclass
class FixedKLController:
    """A constant KL coefficient beta (InstructGPT: 0.02)."""

    kl_coef: float | jax.Array

    @property
    def value(self) -> float | jax.Array:
        return self.kl_coef

    def next_coef(self, current_kl: float | jax.Array, n_steps: int) -> float | jax.Array:
        """beta after a batch of `n_steps` episodes with mean episode KL `current_kl`: unchanged."""
        del current_kl, n_steps
        return self.kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.next_coef(current_kl, n_steps)


@dataclasses.dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon).

    `next_coef` is pure (it works on traced arrays: the PPO update runs it inside its jit, with the
    coefficient kept in `PPOState.kl_coef`); `update` applies it to the controller's own value.
    """

    init_kl_coef: float | jax.Array
    target: float  # target KL per episode (nats)
    horizon: float  # episodes over which a 20% error moves beta by 20%
    kl_coef: float | jax.Array = dataclasses.field(default=None)

    def __post_init__(self):
        if self.kl_coef is None:
            self.kl_coef = self.init_kl_coef

    @property
    def value(self) -> float | jax.Array:
        return self.kl_coef

    def next_coef(self, current_kl: float | jax.Array, n_steps: int) -> jax.Array:
        """beta after a batch of `n_steps` episodes with mean episode KL `current_kl`."""
        error = jnp.clip(current_kl / self.target - 1.0, -0.2, 0.2)
        return self.kl_coef * (1.0 + error * n_steps / self.horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        self.kl_coef = float(self.next_coef(current_kl, n_steps))
        return self.kl_coef


KLController = FixedKLController | AdaptiveKLController
