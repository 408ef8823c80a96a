"""Shared pytest set-up: no test may reach the network; 8 fake CPU devices for sharding tests; the
XLA:CPU process settings the entry points run with; tests marked `needs_devices(n)` skip on fewer
devices, except under CI, where they fail."""

import os

# Set before any test module imports transformers / huggingface_hub, which read them at import.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
# Sharding tests need 8 devices: fake them on the CPU (set before jax is imported).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

from instructjax import cpu_runtime  # noqa: E402  (after XLA_FLAGS: jax reads it at its first computation)

# The suite runs in-process what experiments/*.py run, with the settings they apply: the XLA flag
# changes how reductions round, and both keep the suite as fast as the entry points.
cpu_runtime.apply()

pytest_plugins = ["pytester", "instructjax.testing.devices"]
