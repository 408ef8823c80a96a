"""A pytest plugin for tests that need several jax devices (sharding equivalence on fake CPU devices).

    @pytest.mark.needs_devices(8)
    def test_sharded_equals_single_device(): ...

With fewer devices such a test is skipped locally, but FAILS when the environment variable `CI` is
set (to anything but "", "0" or "false"): a CI job that lost its fake devices must not pass by
skipping every sharding test. Enable it with `pytest_plugins = ["instructjax.testing.devices"]`.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import pytest

MARKER = "needs_devices"


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() not in ("", "0", "false")


def shortage(needed: int, available: int) -> Optional[str]:
    """Why a test needing `needed` devices cannot run on `available` (None: it can)."""
    if available >= needed:
        return None
    return (f"needs {needed} jax devices, found {available} "
            f"(on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count={needed}, set in tests/conftest.py)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(n): needs n jax devices; skipped with fewer, failed under CI")


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return
    import jax  # only for tests that ask: the device count starts jax's backend

    reason = shortage(int(marker.args[0]), jax.device_count())
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)
