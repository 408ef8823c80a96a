"""Checks of a checkpoint on disk: a SHA-256 manifest of its files (written with it, verified before it is
restored) and the finiteness of the state restored from it."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp

from instructjax.train.fingerprint import file_sha256

MANIFEST = "checksums.json"


class BadCheckpointError(ValueError):
    """A checkpoint whose files differ from its manifest, or whose state is not finite."""


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    """The files of the checkpoint's items (state/, data/); not Orbax's step metadata at the top, which it
    updates after finalizing (commit time)."""
    return sorted(p for p in step_dir.glob("*/**/*") if p.is_file())


def write_manifest(step_dir: pathlib.Path) -> None:
    """Write STEP_DIR/checksums.json: {relative path: [size, sha256]} of the item files, atomically."""
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, file_sha256(p)] for p in _files(step_dir)}
    tmp = step_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, step_dir / MANIFEST)


def verify_manifest(step_dir: pathlib.Path) -> bool:
    """True when STEP_DIR's files match its manifest; False when it has none (written before manifests);
    a `BadCheckpointError` naming the checkpoint and the first file that differs, is missing or is extra."""
    path = step_dir / MANIFEST
    if not path.exists():
        return False
    try:
        want = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise BadCheckpointError(f"checkpoint {step_dir}: unreadable {MANIFEST} ({e})") from None
    have = {str(p.relative_to(step_dir)): p for p in _files(step_dir)}
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            raise BadCheckpointError(f"checkpoint {step_dir}: {name} is missing (listed in {MANIFEST})")
        if name not in want:
            raise BadCheckpointError(f"checkpoint {step_dir}: {name} is not in {MANIFEST}")
        size, digest = want[name]
        if have[name].stat().st_size != size or file_sha256(have[name]) != digest:
            raise BadCheckpointError(f"checkpoint {step_dir}: {name} does not match its checksum in {MANIFEST} "
                                     "(the file changed on disk after it was written)")
    return True


def non_finite_leaves(tree: Any) -> list[str]:
    """Paths (`.params['lm_head']`) of the leaves of `tree` that hold a NaN or an infinity."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    finite = jax.device_get(jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])([x for _, x in leaves]))
    return [jax.tree_util.keystr(path) for (path, _), ok in zip(leaves, finite) if not ok]


def check_finite(tree: Any, step_dir: pathlib.Path, limit: int = 5) -> None:
    """A `BadCheckpointError` naming the non-finite leaves of the state restored from STEP_DIR."""
    bad = non_finite_leaves(tree)
    if bad:
        shown = ", ".join(bad[:limit]) + (f" and {len(bad) - limit} more" if len(bad) > limit else "")
        raise BadCheckpointError(f"checkpoint {step_dir}: non-finite values (NaN or inf) in {shown}")
