"""Process settings for fast XLA:CPU steps, applied when `instructjax` is imported.

Two settings, each measured on SmolLM2-135M forward + backward steps (docs/benchmarks.md):

- `XLA_FLAGS`: XLA:CPU (jaxlib 0.10-0.11) hands reductions to YNNPACK by default and then fuses
  the LM head's matmul with the max of the log-softmax over the vocabulary into one YNNPACK call
  about 5x slower than the matmul alone. Without YNNPACK reductions the step is about 15% faster;
  matmuls stay on YNNPACK. jax reads `XLA_FLAGS` when it creates its first backend, so this takes
  effect when instructjax is imported before the first jax computation (every script in
  `experiments/` and `benchmarks/` does). A flag that `XLA_FLAGS` already names is left as set.
- glibc malloc: XLA:CPU allocates each execution's temporary buffer (gigabytes for a training
  step) afresh; glibc serves it with `mmap` and returns it with `munmap`, so every step
  page-faults all of it in again (about a million faults a step). One arena that grows with
  `brk`, never uses `mmap` and never trims keeps the memory for the next step: about 15% faster,
  and the process keeps its peak memory until it exits. (TCMalloc, which jax recommends for
  TPU hosts, does the same; this needs no preloaded library.) Linux with glibc only.

`INSTRUCTJAX_CPU_TUNING=0` in the environment turns both off.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import sys
from typing import MutableMapping

XLA_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-REDUCE"}
# jaxlib versions whose XLA knows these flags (an unknown flag in XLA_FLAGS aborts the process).
JAXLIB_RANGE = ((0, 10), (0, 12))
# mallopt(3) parameters: no trimming, no mmap, one arena.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MALLOC_OPTIONS = {_M_TRIM_THRESHOLD: -1, _M_MMAP_MAX: 0, _M_ARENA_MAX: 1}  # -1: never trim (mallopt(3))
# The same settings as environment variables, for a process that does not import instructjax
# (benchmarks give them to the competitor they run in a subprocess).
MALLOC_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(2 ** 62), "MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1"}


def enabled(environ: MutableMapping[str, str] = os.environ) -> bool:
    return environ.get("INSTRUCTJAX_CPU_TUNING", "1") != "0"


def _jaxlib_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def add_xla_flags(environ: MutableMapping[str, str] = os.environ,
                  jaxlib_version: tuple[int, ...] | None = None) -> list[str]:
    """Appends each of `XLA_CPU_FLAGS` that `environ["XLA_FLAGS"]` does not name; returns those added."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    low, high = JAXLIB_RANGE
    if not enabled(environ) or not low <= version < high:
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in XLA_CPU_FLAGS.items() if f"--{name}=" not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def keep_freed_memory(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Sets `MALLOC_OPTIONS` with glibc's mallopt; returns whether every option was accepted."""
    if not enabled(environ) or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in MALLOC_OPTIONS.items())


def apply() -> None:
    """Both settings; called by `instructjax/__init__.py` before any submodule can start a jax backend."""
    add_xla_flags()
    keep_freed_memory()
