"""Shared pytest set-up: no test may reach the network; 8 fake CPU devices for sharding tests; XLA's
code generation at -O0; the XLA:CPU process settings the entry points run with; tests marked
`needs_devices(n)` skip on fewer devices, except under CI, where they fail."""

import os

# Set before any test module imports transformers / huggingface_hub, which read them at import.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

from instructjax import cpu_runtime  # noqa: E402  (after the HF variables; importing it computes nothing)

# Set before jax's first computation; the experiments that tests start inherit both (`run_experiment`).
# Sharding tests need 8 devices: fake them on the CPU.
# XLA compiles the machine code without LLVM's optimisations (its own HLO passes, fusion and sharding
# stay as they are): most of the suite's time is XLA compiling programs of tiny models (70% of an
# in-process PPO test's), and -O0 takes 40-45% off the compilation.
# The rounding of a few operations differs from the entry points' in the last bits, and every test
# that compares two runs makes both with these flags. `XLA_FLAGS=--xla_backend_optimization_level=3`
# runs the suite with the entry points' code generation (a flag XLA_FLAGS names is left as set).
cpu_runtime.add_xla_flags(flags={"xla_force_host_platform_device_count": "8", "xla_backend_optimization_level": "0"})
# The suite runs in-process what experiments/*.py run, with the settings they apply: the XLA flag
# changes how reductions round, and both keep the suite as fast as the entry points.
cpu_runtime.apply()

pytest_plugins = ["pytester", "instructjax.testing.devices"]
