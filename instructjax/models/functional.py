"""Pure functions around `Transformer`: parameter init, logical axes, stacked layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from instructjax.models.config import ModelConfig
from instructjax.models.transformer import Transformer


def _dummy_tokens():
    return jnp.zeros((1, 1), jnp.int32)


def init_params(cfg: ModelConfig, rng: jax.Array, head: str = "lm") -> dict:
    """Randomly initialised parameters as a plain pytree (no partitioning boxes)."""
    variables = Transformer(cfg, head=head).init(rng, _dummy_tokens())
    return nn.meta.unbox(variables["params"])


def param_logical_axes(cfg: ModelConfig, head: str = "lm") -> dict:
    """PartitionSpecs of logical axis names, one per parameter (same tree as `init_params`)."""
    shapes = jax.eval_shape(lambda: Transformer(cfg, head=head).init(jax.random.key(0), _dummy_tokens()))
    return nn.get_partition_spec(shapes)["params"]


def _is_layer(name: str) -> bool:
    return name.startswith("layers_") and name[len("layers_"):].isdigit()


def stack_layers(params: dict) -> dict:
    """`layers_0..layers_{L-1}` -> one `layers` subtree with a leading layer axis (scan_layers layout)."""
    names = sorted((k for k in params if _is_layer(k)), key=lambda k: int(k.split("_")[1]))
    out = {k: v for k, v in params.items() if not _is_layer(k)}
    out["layers"] = jax.tree.map(lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs),
                                 *[params[k] for k in names])
    return out


def unstack_layers(params: dict) -> dict:
    """Inverse of `stack_layers`."""
    out = {k: v for k, v in params.items() if k != "layers"}
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
    return out
