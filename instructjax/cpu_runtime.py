"""Process settings for fast XLA:CPU steps, applied explicitly by `apply()` (importing instructjax
changes nothing): the command-line entry points in `experiments/` and `benchmarks/` call it first
thing; in a notebook or your own script call `ij.cpu_runtime.apply()` before any jax computation.

Two settings, each measured on SmolLM2-135M forward + backward steps (docs/benchmarks.md):

- `XLA_FLAGS`: XLA:CPU (jaxlib 0.10-0.11) hands reductions to YNNPACK by default and then fuses
  the LM head's matmul with the max of the log-softmax over the vocabulary into one YNNPACK call
  about 5x slower than the matmul alone. Without YNNPACK reductions the step is about 15% faster;
  matmuls stay on YNNPACK. jax reads `XLA_FLAGS` when it creates its first backend, so `apply()`
  must run before the first jax computation. A flag that `XLA_FLAGS` already names is left as set.
- glibc malloc: XLA:CPU allocates each execution's temporary buffer (gigabytes for a training
  step) afresh; glibc serves it with `mmap` and returns it with `munmap`, so every step
  page-faults all of it in again (about a million faults a step). One arena that grows with
  `brk`, never uses `mmap` and never trims keeps the memory for the next step: about 15% faster,
  and the process keeps its peak memory until it exits. (TCMalloc, which jax recommends for
  TPU hosts, does the same; this needs no preloaded library.) Linux with glibc only. A process that
  runs phases one after another calls `release_freed_memory()` between them (the pipeline does, after
  each stage), or it holds every earlier phase's freed heap beside the next one's peak; within a phase
  the training loop calls `release_if_memory_low()` after each step, so that a heap grown by
  fragmentation is trimmed before the machine runs out of memory.

`apply()` sets them only when jax will run on the CPU (`will_use_cpu`): `JAX_PLATFORMS` set, its
first platform (jax's default) is "cpu"; unset, no accelerator plugin for jax is installed (a
module of the `jax_plugins` namespace or a `jax_plugins` entry point, as the CUDA, ROCm and Metal
plugins are, or the `libtpu` package). A GPU/TPU host therefore keeps glibc's defaults.
`INSTRUCTJAX_CPU_TUNING=0` in the environment turns both off everywhere.

`native_bf16()` says whether bfloat16 compute is fast here: on an accelerator, and on a CPU with
native bf16 matmuls (x86 `avx512_bf16` or AMX, Arm `bf16`). An AVX2-only CPU runs bf16 slower than
f32 (converting every operand), so the configs' `dtype="auto"` becomes float32 there
(`instructjax.train.config.resolve_dtypes`). `INSTRUCTJAX_NATIVE_BF16=1` or `0` overrides the answer.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform
import sys
from typing import Mapping, MutableMapping, Optional, Sequence

__all__ = ["apply", "MALLOC_ENVIRONMENT"]  # the rest: `from instructjax.cpu_runtime import name`

XLA_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-REDUCE"}
# jaxlib versions whose XLA knows these flags (an unknown flag in XLA_FLAGS aborts the process).
JAXLIB_RANGE = ((0, 10), (0, 12))
# mallopt(3) parameters: no trimming, no mmap, one arena.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MALLOC_OPTIONS = {_M_TRIM_THRESHOLD: -1, _M_MMAP_MAX: 0, _M_ARENA_MAX: 1}  # -1: never trim (mallopt(3))
# The same settings as environment variables, for a process that does not call `apply()`
# (benchmarks give them to the competitor they run in a subprocess).
MALLOC_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(2 ** 62), "MALLOC_MMAP_MAX_": "0", "MALLOC_ARENA_MAX": "1"}
TPU_PACKAGE = "libtpu"  # jax finds TPUs through this package, not through a jax_plugins module
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo flags (x86) or features (Arm)
LOW_MEMORY_FRACTION = 0.5  # release_if_memory_low: trim the heap when less than this share of memory is available


def enabled(environ: MutableMapping[str, str] = os.environ) -> bool:
    return environ.get("INSTRUCTJAX_CPU_TUNING", "1") != "0"


def accelerator_plugins() -> list[str]:
    """Installed jax plugins for an accelerator, found without importing jax: modules of the
    `jax_plugins` namespace package, `jax_plugins` entry points, and the libtpu package."""
    found = []
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations is not None:
        found += [f"jax_plugins.{m.name}" for m in pkgutil.iter_modules(namespace.submodule_search_locations)]
    found += [entry.value for entry in importlib.metadata.entry_points(group="jax_plugins")]
    if importlib.util.find_spec(TPU_PACKAGE) is not None:
        found.append(TPU_PACKAGE)
    return found


def will_use_cpu(environ: MutableMapping[str, str] = os.environ,
                 plugins: Optional[Sequence[str]] = None) -> bool:
    """Whether jax's default backend in this process will be the CPU, decided without starting a
    backend: the first platform of `JAX_PLATFORMS` when it is set, else no `accelerator_plugins()`."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not (accelerator_plugins() if plugins is None else plugins)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first processor's flags (x86) or features (Arm) in `cpuinfo`; empty where there is none."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def native_bf16(environ: MutableMapping[str, str] = os.environ, flags: Optional[set[str]] = None) -> bool:
    """Whether bf16 compute is fast: `INSTRUCTJAX_NATIVE_BF16` (1/0) when set, else true on an
    accelerator (`will_use_cpu` false) and on a CPU with one of `NATIVE_BF16_FLAGS`."""
    override = environ.get("INSTRUCTJAX_NATIVE_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    if override:
        raise ValueError(f"INSTRUCTJAX_NATIVE_BF16={override!r}: expected 1 or 0 (or unset: detect)")
    if not will_use_cpu(environ):
        return True
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def _jaxlib_version() -> tuple[int, ...]:
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def missing_xla_flags(environ: MutableMapping[str, str] = os.environ,
                      jaxlib_version: tuple[int, ...] | None = None) -> list[str]:
    """Those of `XLA_CPU_FLAGS` that `environ["XLA_FLAGS"]` does not name (none for a jaxlib
    outside `JAXLIB_RANGE`, or when the tuning is off), as `--name=value`."""
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    low, high = JAXLIB_RANGE
    if not enabled(environ) or not low <= version < high:
        return []
    return unnamed_xla_flags(XLA_CPU_FLAGS, environ)


def unnamed_xla_flags(flags: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Those of `flags` (name: value) that `environ["XLA_FLAGS"]` does not name, as `--name=value`."""
    current = environ.get("XLA_FLAGS", "")
    return [f"--{name}={value}" for name, value in flags.items() if f"--{name}=" not in current]


def add_xla_flags(environ: MutableMapping[str, str] = os.environ,
                  jaxlib_version: tuple[int, ...] | None = None,
                  flags: Optional[Mapping[str, str]] = None) -> list[str]:
    """Appends to `environ["XLA_FLAGS"]` those of `flags` it does not name (by default
    `missing_xla_flags`: this module's, when they apply); returns those added."""
    added = missing_xla_flags(environ, jaxlib_version) if flags is None else unnamed_xla_flags(flags, environ)
    if added:
        environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", ""), *added]).strip()
    return added


def keep_freed_memory(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Sets `MALLOC_OPTIONS` with glibc's mallopt; returns whether every option was accepted."""
    if not enabled(environ) or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in MALLOC_OPTIONS.items())


def release_freed_memory() -> bool:
    """Hands the heap's free pages back to the OS (glibc's `malloc_trim`, after a garbage collection);
    returns whether it could. `keep_freed_memory` makes one step reuse the last step's buffers, but a
    long process that runs one phase after another (the pipeline's stages) then holds every phase's
    freed heap on top of the next phase's peak: call this between phases. A no-op off glibc."""
    gc.collect()  # jax arrays of the finished phase that only a reference cycle keeps alive
    return _malloc_trim()


def available_memory_fraction(meminfo: str = "/proc/meminfo") -> Optional[float]:
    """The machine's MemAvailable / MemTotal; None where `meminfo` cannot be read (off Linux)."""
    try:
        with open(meminfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemAvailable"].split()[0]) / int(fields["MemTotal"].split()[0])
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


def release_if_memory_low(min_available: float = LOW_MEMORY_FRACTION, meminfo: str = "/proc/meminfo") -> bool:
    """Hands the heap's free pages back (`malloc_trim`, no garbage collection: cheap enough after every
    training step) when less than `min_available` of the machine's memory is available; returns whether
    it did. Within one long phase the kept heap can still grow: XLA's buffers of a step land wherever the
    fragmented heap has room, so the `make demo` SFT stage's RSS reached 12.6 to 24.3 GB in five runs
    of the same steps (its XLA plan: about 8.5 GB) and was OOM-killed twice. The training loop calls
    this after each step; the steps after a release page-fault their buffers in again."""
    fraction = available_memory_fraction(meminfo)
    return fraction is not None and fraction < min_available and _malloc_trim()


def _malloc_trim() -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    return bool(ctypes.CDLL(None).malloc_trim(0))


def _jax_backend_started() -> bool:
    """Whether this process's jax has created a backend (after which XLA_FLAGS is not read again)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # jax has no public query for this
    return xla_bridge.backends_are_initialized()


def apply(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Both settings, when the tuning is on and jax will run on the CPU (`will_use_cpu`); returns
    whether they were applied. Call it before the first jax computation: a flag still missing from
    `XLA_FLAGS` once jax has started its backend raises instead of being silently ignored."""
    if not enabled(environ) or not will_use_cpu(environ):
        return False
    missing = missing_xla_flags(environ)
    if missing and _jax_backend_started():
        raise RuntimeError(f"ij.cpu_runtime.apply(): jax has already started its backend, so XLA_FLAGS += "
                           f"{' '.join(missing)} would be ignored; call it before the first jax computation "
                           "(in a notebook: restart the kernel)")
    add_xla_flags(environ)
    keep_freed_memory(environ)
    return True
