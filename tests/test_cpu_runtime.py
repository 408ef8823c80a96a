"""XLA:CPU process settings (instructjax.cpu_runtime): importing instructjax changes nothing, the
entry points apply them, only for runs on the CPU backend."""

import json
import os
import pathlib
import platform
import subprocess
import sys

import jax.numpy as jnp
import pytest

from instructjax import cpu_runtime

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-REDUCE"
REPO = pathlib.Path(__file__).resolve().parents[1]
KNOWN_JAXLIB = cpu_runtime.JAXLIB_RANGE[0] <= cpu_runtime._jaxlib_version() < cpu_runtime.JAXLIB_RANGE[1]


def test_adds_the_flag_after_existing_ones():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 10)) == [FLAG]
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + FLAG
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 10)) == []  # idempotent
    assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_adds_given_flags_whatever_the_jaxlib_and_keeps_those_named():
    env = {"XLA_FLAGS": "--xla_backend_optimization_level=3", "INSTRUCTJAX_CPU_TUNING": "0"}
    flags = {"xla_force_host_platform_device_count": "8", "xla_backend_optimization_level": "0"}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 9), flags=flags) == [
        "--xla_force_host_platform_device_count=8"]
    assert env["XLA_FLAGS"] == "--xla_backend_optimization_level=3 --xla_force_host_platform_device_count=8"
    assert cpu_runtime.add_xla_flags(env, flags=flags) == []


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
    env = {"INSTRUCTJAX_CPU_TUNING": "0", "JAX_PLATFORMS": "cpu"}
    assert cpu_runtime.add_xla_flags(env, jaxlib_version=(0, 10)) == []
    assert not cpu_runtime.keep_freed_memory(env)
    assert not cpu_runtime.apply(env)
    assert env == {"INSTRUCTJAX_CPU_TUNING": "0", "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize("platforms, plugins, cpu", [
    ("cpu", ["jax_plugins.xla_cuda12"], True),  # JAX_PLATFORMS decides: its first platform is the default
    ("cpu,cuda", [], True),
    ("cuda", [], False),
    ("tpu,cpu", [], False),
    ("", [], True),  # unset: the CPU unless an accelerator plugin is installed
    ("", ["jax_plugins.xla_cuda12"], False),
    ("", ["libtpu"], False),
])
def test_will_use_cpu(platforms, plugins, cpu):
    assert cpu_runtime.will_use_cpu({"JAX_PLATFORMS": platforms}, plugins) == cpu


def test_finds_a_jax_plugins_module_without_importing_it(tmp_path, monkeypatch):
    plugin = tmp_path / "jax_plugins" / "xla_fake_gpu"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("raise ImportError('a plugin must not be imported to be found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "jax_plugins.xla_fake_gpu" in cpu_runtime.accelerator_plugins()
    assert not cpu_runtime.will_use_cpu({})


def test_accelerator_run_keeps_the_process_as_it_is():
    env = {"JAX_PLATFORMS": "cuda"}
    assert not cpu_runtime.apply(env)
    assert env == {"JAX_PLATFORMS": "cuda"}


@pytest.mark.skipif(not KNOWN_JAXLIB, reason="no XLA flag for this jaxlib")
def test_apply_after_jax_started_raises_instead_of_ignoring_the_flag():
    jnp.ones(2).sum().block_until_ready()  # this process's backend is running
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    with pytest.raises(RuntimeError, match=r"cpu_runtime.apply\(\).*already started.*ynn_fusion_type"):
        cpu_runtime.apply(env)
    assert env["XLA_FLAGS"] == ""
    assert cpu_runtime.apply({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": FLAG})  # nothing left to add: fine


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_malloc_options_are_accepted():
    assert cpu_runtime.keep_freed_memory({})


# Observes the process from inside: XLA_FLAGS, and whether glibc serves a 64 MiB malloc with mmap
# (its default above 32 MiB; never after cpu_runtime's mallopt(M_MMAP_MAX, 0)).
PROBE = r"""
import ctypes, json, os, runpy, sys

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = Mallinfo2

def observe():
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)
    mmapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "mmap": mmapped}

seen = {"start": observe()}
import instructjax
seen["import"] = observe()
sys.argv = ["experiments/sft.py", "--only_check_args", "--config=experiments/configs/sft.py:tiny", "--workdir=unused"]
try:
    runpy.run_path("experiments/sft.py", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
seen["entry_point"] = observe()
import jax.numpy as jnp
seen["jax_runs"] = int(jnp.ones(3).sum())
print(json.dumps(seen))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="observes glibc malloc")
def test_import_changes_nothing_and_an_entry_point_applies_both():
    """A fresh interpreter: `import instructjax` leaves XLA_FLAGS and malloc as they were;
    experiments/sft.py (flags parsed, stopped before main) then applies both, and jax still runs."""
    env = {k: v for k, v in os.environ.items() if k != "INSTRUCTJAX_CPU_TUNING" and not k.startswith("MALLOC_")}
    env |= {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    untouched = {"xla_flags": "--xla_force_host_platform_device_count=1", "mmap": True}
    assert seen["start"] == untouched
    assert seen["import"] == untouched
    assert seen["entry_point"] == {"xla_flags": " ".join([untouched["xla_flags"], *([FLAG] if KNOWN_JAXLIB else [])]),
                                   "mmap": False}
    assert seen["jax_runs"] == 3


@pytest.mark.parametrize("flags, native", [
    ({"avx2", "avx512f", "avx512_bf16"}, True),   # AMD EPYC (Zen 4) / Intel Cooper Lake and later
    ({"avx2", "amx_bf16", "amx_tile"}, True),     # Intel Sapphire Rapids AMX
    ({"fp", "asimd", "bf16"}, True),              # Arm with BF16 (Features line)
    ({"avx2", "fma", "avx512f"}, False),          # AVX-512 without bf16 (Skylake-X)
    ({"avx2", "fma"}, False),                     # AVX2 only: bf16 is slower than f32 there
])
def test_native_bf16_from_the_cpu_flags(flags, native):
    assert cpu_runtime.native_bf16({"JAX_PLATFORMS": "cpu"}, flags=flags) is native


def test_native_bf16_on_accelerators_and_the_override():
    assert cpu_runtime.native_bf16({"JAX_PLATFORMS": "cuda"}, flags=set())
    assert cpu_runtime.native_bf16({"JAX_PLATFORMS": "cpu", "INSTRUCTJAX_NATIVE_BF16": "1"}, flags=set())
    assert not cpu_runtime.native_bf16({"JAX_PLATFORMS": "cuda", "INSTRUCTJAX_NATIVE_BF16": "0"}, flags={"bf16"})
    with pytest.raises(ValueError, match="INSTRUCTJAX_NATIVE_BF16='yes': expected 1 or 0"):
        cpu_runtime.native_bf16({"INSTRUCTJAX_NATIVE_BF16": "yes"})


def test_cpu_flags_read_x86_and_arm_cpuinfo(tmp_path):
    x86, arm = tmp_path / "x86", tmp_path / "arm"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n"
                   "flags\t\t: fpu\n")
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd bf16\n")
    assert cpu_runtime.cpu_flags(str(x86)) == {"fpu", "avx2", "avx512_bf16"}  # the first processor's
    assert cpu_runtime.cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}
    assert cpu_runtime.cpu_flags(str(tmp_path / "none")) == set()


# A process with the tuned malloc frees 512 MiB (kept: RSS stays up), then releases it.
RELEASE_PROBE = r"""
import ctypes, json
from instructjax import cpu_runtime

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
assert cpu_runtime.keep_freed_memory({})
base = rss_mib()
blocks = [libc.malloc(1 << 20) for _ in range(512)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
used = rss_mib()
for b in blocks:
    libc.free(b)
kept = rss_mib()
released = eval(RELEASE)
print(json.dumps({"base": base, "used": used, "kept": kept, "after": rss_mib(), "released": released}))
"""


def _meminfo(tmp_path, available_kb: int) -> str:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       1000000 kB\nMemFree:          5000 kB\nMemAvailable:   {available_kb} kB\n")
    return str(path)


def _release_probe(release: str) -> dict:
    out = subprocess.run([sys.executable, "-c", f"RELEASE = {release!r}\n" + RELEASE_PROBE], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "INSTRUCTJAX_CPU_TUNING": "1"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="observes glibc malloc")
def test_release_freed_memory_hands_the_kept_heap_back():
    r = _release_probe("cpu_runtime.release_freed_memory()")
    assert r["used"] - r["base"] >= 500 and r["kept"] - r["base"] >= 500, r  # freed, but kept by the heap
    assert r["released"] and r["after"] - r["base"] < 64, r  # handed back


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="observes glibc malloc")
def test_release_if_memory_low_trims_only_when_memory_is_low(tmp_path):
    assert cpu_runtime.available_memory_fraction(_meminfo(tmp_path, 250000)) == 0.25
    assert cpu_runtime.available_memory_fraction(str(tmp_path / "none")) is None
    low = _release_probe(f"cpu_runtime.release_if_memory_low(0.5, {_meminfo(tmp_path, 250000)!r})")
    assert low["released"] and low["kept"] - low["base"] >= 500 and low["after"] - low["base"] < 64, low
    plenty = _release_probe(f"cpu_runtime.release_if_memory_low(0.5, {_meminfo(tmp_path, 750000)!r})")
    assert not plenty["released"] and plenty["after"] - plenty["base"] >= 500, plenty  # kept for the next step
