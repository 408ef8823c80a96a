"""Per-token KL estimators and the KL coefficient controllers (RLHF.md items 14, 16)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str = "k1") -> jax.Array:
    """Estimate of KL(policy || reference) per sampled token: k1, k2 or k3 (Schulman's estimators)."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * jnp.square(log_ratio)
    if kind == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_penalty kind={kind!r}: expected 'k1', 'k2' or 'k3'")


@dataclasses.dataclass(frozen=True)
class FixedKLController:
    """A constant KL coefficient beta (InstructGPT: 0.02)."""

    def next_coef(self, kl_coef: jax.Array | float, kl: jax.Array | float, n_steps: int) -> jax.Array | float:
        """beta after a batch of `n_steps` episodes with mean episode KL `kl`: unchanged."""
        del kl, n_steps
        return kl_coef


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
    """Ziegler et al. 2019: beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon).

    The coefficient itself is state (`PPOState.kl_coef`); the controller holds the settings, and
    `next_coef` is a pure function of arrays, so the PPO update runs it inside its jit.
    """

    target: float  # target KL per episode (nats)
    horizon: float  # episodes over which an error of 20% would double or halve beta

    def next_coef(self, kl_coef: jax.Array | float, kl: jax.Array | float, n_steps: int) -> jax.Array:
        """beta after a batch of `n_steps` episodes with mean episode KL `kl`."""
        error = jnp.clip(kl / self.target - 1.0, -0.2, 0.2)
        return kl_coef * (1.0 + error * n_steps / self.horizon)


KLController = FixedKLController | AdaptiveKLController
