"""Shared pytest set-up: no test may reach the network; 8 fake CPU devices for sharding tests."""

import os

# Set before any test module imports transformers / huggingface_hub, which read them at import.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
# Sharding tests need 8 devices: fake them on the CPU (set before jax is imported).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
