"""Process settings applied at import (instructjax.cpu_runtime)."""

import os
import subprocess
import sys

import pytest

from instructjax import cpu_runtime

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-REDUCE"


def test_adds_the_flag_after_existing_ones():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 10)) == [FLAG]
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + FLAG
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 10)) == []  # idempotent
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_keeps_a_flag_the_user_set():
    env = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 11)) == []
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="


@pytest.mark.parametrize("version", [(0, 9), (0, 12), ()])
def test_unknown_jaxlib_gets_no_flag(version):
    env = {}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=version) == []
    assert "XLA_FLAGS" not in env


def test_opt_out():
    env = {"INSTRUCTJAX_CPU_TUNING": "0"}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 10)) == []
    assert not cpu_runtime.keep_freed_memory(env)
    assert "XLA_FLAGS" not in env


def test_import_sets_the_flag_before_jax_starts():
    """A fresh interpreter: importing instructjax puts the flag into XLA_FLAGS and jax still runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "INSTRUCTJAX_CPU_TUNING")}
    code = "import os, instructjax, jax.numpy as jnp; print(os.environ.get('XLA_FLAGS', '')); print(int(jnp.ones(3).sum()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    flags, total = out.strip().splitlines()[-2:]
    expected = [FLAG] if cpu_runtime.JAXLIB_RANGE[0] <= cpu_runtime._jaxlib_version() < cpu_runtime.JAXLIB_RANGE[1] else []
    assert flags.split() == expected
    assert total == "3"


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_malloc_options_are_accepted():
    assert cpu_runtime.keep_freed_memory({})
