"""Mesh construction and parameter sharding on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import parallel
from instructjax.models import Transformer, get_preset
from instructjax.models.functional import init_params

needs_8 = pytest.mark.needs_devices(8)


@needs_8
def test_make_mesh_fills_minus_one():
    mesh = parallel.make_mesh((2, -1, 2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="does not cover"):
        parallel.make_mesh((3, 1, 1))
    with pytest.raises(ValueError, match="at most one -1"):
        parallel.make_mesh((-1, -1, 1))


@needs_8
def test_sharded_forward_equals_single_device():
    cfg = get_preset("tiny").replace(num_kv_heads=2)
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 6)), jnp.int32)
    ref = Transformer(cfg).apply({"params": params}, tokens)
    mesh = parallel.make_mesh((2, 2, 2))
    shardings = parallel.param_shardings(cfg, params, mesh)
    assert shardings["layers_0"]["attn"]["q"]["kernel"].spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    sharded = jax.device_put(params, shardings)
    batch = jax.device_put(tokens, parallel.batch_sharding(mesh))
    with parallel.activation_sharding(mesh):
        out = jax.jit(lambda p, t: Transformer(cfg).apply({"params": p}, t))(sharded, batch)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@needs_8
def test_indivisible_dims_are_replicated():
    cfg = get_preset("tiny").replace(num_heads=3, num_kv_heads=3)
    params = init_params(cfg, jax.random.key(0))
    mesh = parallel.make_mesh((1, 1, 8))
    spec = parallel.param_shardings(cfg, params, mesh)["layers_0"]["attn"]["k"]["kernel"].spec
    assert spec == jax.sharding.PartitionSpec("fsdp", None, None)  # 3 heads do not split over tensor=8


def test_initialize_distributed_refuses_placement_without_multi_host():
    parallel.initialize_distributed(False)  # one process: nothing to join
    with pytest.raises(ValueError, match=r"config.parallel.coordinator_address, num_processes need "
                                         r"config.parallel.multi_host=True"):
        parallel.initialize_distributed(False, "127.0.0.1:1234", 2)
    with pytest.raises(ValueError, match=r"config.parallel.process_id=2 must be in 0..num_processes-1"):
        parallel.initialize_distributed(True, "127.0.0.1:1234", 2, 2)


def test_batches_over_one_process_are_computed_once_each_in_order():
    calls = []

    def compute(b):
        calls.append(b)
        return np.full(3, b)
    out = list(parallel.batches_over_processes(compute, 4))
    assert [b for b, _ in out] == calls == [0, 1, 2, 3]
    assert all((x == b).all() for b, x in out)
    assert list(parallel.batches_over_processes(compute, 0)) == []


def test_host_values_copy_local_arrays_as_they_are():
    tree = {"a": np.arange(4), "b": jnp.ones((2, 3))}
    got = parallel.host_values(tree)
    assert isinstance(got["b"], np.ndarray) and got["b"].shape == (2, 3)
    np.testing.assert_array_equal(got["a"], np.arange(4))
