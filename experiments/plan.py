"""Per-device memory of a stage before running it: its train step (PPO / GRPO: rollout, scoring and update)
compiled ahead of time on abstract arrays over a mesh of fake CPU devices (docs/memory.md).

    python experiments/plan.py --config=experiments/configs/sft.py:smollm2 --preset=llama3_8b \\
        --mesh=8,1,1 --device_gb=80
"""

import os
import sys


def mesh_shape(text: str) -> tuple[int, ...]:
    """"8,1,1" or "(8,1,1)" -> (8, 1, 1)."""
    return tuple(int(s) for s in text.strip("()").split(","))


def _fake_devices(argv) -> None:
    """XLA_FLAGS with --devices fake CPU devices (default: the mesh's size), before jax starts."""
    values = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    mesh = mesh_shape(values.get("mesh", "1,1,1"))
    count = int(values.get("devices", 0)) or abs(mesh[0] * mesh[1] * mesh[2])
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"


_fake_devices(sys.argv)

from absl import app, flags  # noqa: E402  (jax starts after the flags above)
from ml_collections import config_flags  # noqa: E402

from instructjax import parallel  # noqa: E402
from instructjax.train.config import check_stage_config, resolve_dtypes  # noqa: E402
from instructjax.train.memory import format_plan, plan_stage, planned_model  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "an SFT, PPO or GRPO config (experiments/configs/*.py)",
                                          lock_config=True)
_PRESET = flags.DEFINE_string("preset", "", "model shape (instructjax.models.config.PRESETS); '': the config's init model")
_MESH = flags.DEFINE_string("mesh", "1,1,1", "sizes of the (data, fsdp, tensor) mesh axes, e.g. (8,1,1)")
_DEVICES = flags.DEFINE_integer("devices", 0, "fake CPU devices (0: the mesh's size)")
_DEVICE_GB = flags.DEFINE_float("device_gb", 80.0, "memory of one device (GiB) for the verdict")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = resolve_dtypes(_CONFIG.value)
    stage = "ppo" if "rollout" in config else "sft"
    check_stage_config(config, stage, config_flags.get_config_filename(flags.FLAGS["config"]))
    mesh = parallel.make_mesh(mesh_shape(_MESH.value))
    print(format_plan(plan_stage(stage, config, planned_model(config, _PRESET.value), mesh), _DEVICE_GB.value))


if __name__ == "__main__":
    app.run(main)
