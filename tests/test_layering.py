"""The package's layering (docs/architecture.md), checked on the source with `ast`: every module has a
layer, imports point down (or stay in their layer), the formulas import only jax, numpy and each
other, nothing in the package imports `instructjax.testing`, and no two subpackages import each other
(directly or around a longer cycle).

Imports anywhere in a module count (also inside functions); imports under `if TYPE_CHECKING:` don't.
The package root `instructjax/__init__.py` is the facade that imports every subpackage: it is not checked.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "instructjax"

FOUNDATION, FORMULAS, ROLLOUT, TRAINERS, PIPELINE, TESTING = 1, 2, 3, 4, 5, 6
LAYER_NAMES = {FOUNDATION: "foundation", FORMULAS: "formulas", ROLLOUT: "rollout/scoring", TRAINERS: "trainers",
               PIPELINE: "pipeline", TESTING: "testing"}

# Module (or package: it covers its submodules) -> layer; the longest matching prefix wins.
LAYERS = {
    "instructjax.models": FOUNDATION,
    "instructjax.checkpoints": FOUNDATION,
    "instructjax.data": FOUNDATION,
    "instructjax.datasets": FOUNDATION,
    "instructjax.tasks": FOUNDATION,  # the task definition: pure Python, imports nothing of the package
    "instructjax.tokenizers": FOUNDATION,
    "instructjax.sampling": FOUNDATION,
    "instructjax.parallel": FOUNDATION,
    "instructjax.cpu_runtime": FOUNDATION,
    "instructjax.losses": FORMULAS,
    "instructjax.stats": FORMULAS,
    "instructjax.rl.advantages": FORMULAS,
    "instructjax.rl.kl": FORMULAS,
    "instructjax.rl.ppo_losses": FORMULAS,
    "instructjax.rl.per_token_rewards": FORMULAS,
    "instructjax.rl": ROLLOUT,  # rl/__init__.py, sampler, rollout, forwards, value_head, frozen, in_graph_rewards, reward_functions
    "instructjax.rewards": ROLLOUT,
    "instructjax.train": TRAINERS,
    "instructjax.evaluation": PIPELINE,
    "instructjax.labelers": PIPELINE,
    "instructjax.pipeline": PIPELINE,
    "instructjax.testing": TESTING,
}
# What the formulas may import besides the standard library and other formulas.
FORMULA_THIRD_PARTY = {"jax", "numpy"}


@dataclasses.dataclass(frozen=True)
class Import:
    module: str   # the importing module
    target: str   # the instructjax module it imports (the most specific one that exists), or a third-party one
    line: int

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) imports {self.target}"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Import statements under `node`, skipping the bodies of `if TYPE_CHECKING:` (not their else)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def imports(root: pathlib.Path = PACKAGE) -> list[Import]:
    """Every import of every module under `root`; `from a import b` resolves to `a.b` when that is a module."""
    known = modules(root)
    found = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(name, alias.name, node.lineno) for alias in node.names]
                continue
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.append(Import(name, candidate if candidate in known else source, node.lineno))
    return list(dict.fromkeys(found))  # `from a.b import c, d` imports a.b once


def layer_of(module: str, layers: dict[str, int] = LAYERS) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in layers:
            return layers[".".join(parts[:n])]
    return None


def _ours(target: str, root_name: str) -> bool:
    return target.split(".")[0] == root_name


def unlayered(root: pathlib.Path = PACKAGE, layers: dict[str, int] = LAYERS) -> list[str]:
    return [m for m in modules(root) if m != root.name and layer_of(m, layers) is None]


def upward_imports(root: pathlib.Path = PACKAGE, layers: dict[str, int] = LAYERS) -> list[str]:
    """Imports of a higher layer (or of the test helpers), and formulas importing anything but formulas."""
    problems = []
    for imp in imports(root):
        if imp.module == root.name or not _ours(imp.target, root.name) or imp.target == root.name:
            continue
        own, theirs = layer_of(imp.module, layers), layer_of(imp.target, layers)
        if own is None or theirs is None:
            continue  # reported by `unlayered`
        if own == FORMULAS and theirs != FORMULAS:
            problems.append(f"{imp}: the formulas import only jax, numpy and other formulas, "
                            f"not the {LAYER_NAMES[theirs]} layer")
        elif theirs > own:
            problems.append(f"{imp}: layer {own} ({LAYER_NAMES[own]}) may not import "
                            f"layer {theirs} ({LAYER_NAMES[theirs]})")
    return problems


def formula_third_party(root: pathlib.Path = PACKAGE, layers: dict[str, int] = LAYERS) -> list[str]:
    return [f"{imp}: the formulas import only {sorted(FORMULA_THIRD_PARTY)} and the standard library"
            for imp in imports(root)
            if layer_of(imp.module, layers) == FORMULAS and not _ours(imp.target, root.name)
            and imp.target.split(".")[0] not in FORMULA_THIRD_PARTY | set(sys.stdlib_module_names) | {"__future__"}]


def subpackage_cycles(root: pathlib.Path = PACKAGE) -> list[str]:
    """Cycles in the graph of `instructjax.X -> instructjax.Y` (X != Y, top-level modules and subpackages),
    each with one import per edge."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports(root):
        if imp.module == root.name or not _ours(imp.target, root.name) or imp.target == root.name:
            continue
        src, dst = imp.module.split(".")[1], imp.target.split(".")[1]
        if src != dst:
            edges.setdefault(src, {}).setdefault(dst, imp)
    # Tarjan's strongly connected components: every component of more than one node holds a cycle.
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v), on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    problems = []
    for component in components:
        inside = [str(imp) for src in component for dst, imp in sorted(edges.get(src, {}).items())
                  if dst in component]
        problems.append(f"import cycle between {', '.join(component)}: " + "; ".join(inside))
    return problems


def test_every_module_has_a_layer():
    assert not unlayered(), "modules missing from LAYERS (tests/test_layering.py, docs/architecture.md)"


def test_imports_point_down():
    problems = upward_imports()
    assert not problems, "\n".join(problems)


def test_formulas_import_only_jax_and_numpy():
    problems = formula_third_party()
    assert not problems, "\n".join(problems)


def test_no_import_cycles_between_subpackages():
    problems = subpackage_cycles()
    assert not problems, "\n".join(problems)


def test_the_scan_sees_the_known_imports():
    """The scan is not vacuous: it finds imports the package is known to have, relative ones included."""
    found = {(i.module, i.target) for i in imports()}
    assert ("instructjax.train.ppo", "instructjax.train.ppo_update") in found
    assert ("instructjax.rl.ppo_losses", "instructjax.rl.advantages") in found
    assert ("instructjax.testing", "instructjax.tokenizers") in found


# The checker on a made-up package: it must name the module and import that break the rules.

def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / "instructjax" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "instructjax"


CLEAN = {
    "__init__.py": "from instructjax import models, rl, train\n",
    "models/__init__.py": "import numpy\n",
    "rl/__init__.py": "from instructjax.rl import advantages\n",
    "rl/advantages.py": "import jax.numpy as jnp\nfrom . import kl\n",
    "rl/kl.py": "import math\n",
    "train/__init__.py": "from instructjax.models import Model\nfrom instructjax.rl.advantages import gae\n",
    "testing/__init__.py": "from instructjax import train\n",
}


def test_checker_passes_a_clean_package(tmp_path):
    root = _write(tmp_path, CLEAN)
    assert upward_imports(root) == formula_third_party(root) == subpackage_cycles(root) == unlayered(root) == []


@pytest.mark.parametrize("name, text, expected", [
    ("models/bad.py", "from instructjax.train import loop\n",
     "instructjax.models.bad (line 1) imports instructjax.train: layer 1 (foundation) may not import layer 4"),
    ("models/bad.py", "from ..rl import update\n",
     "instructjax.models.bad (line 1) imports instructjax.rl: layer 1 (foundation) may not import layer 3"),
    ("train/bad.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\nelse:\n"
     "    import instructjax.testing\n",
     "instructjax.train.bad (line 5) imports instructjax.testing: layer 4 (trainers) may not import layer 6"),
    ("rl/kl.py", "def f():\n    from instructjax.models import Model\n",
     "instructjax.rl.kl (line 2) imports instructjax.models: the formulas import only jax"),
])
def test_checker_names_an_upward_import(tmp_path, name, text, expected):
    root = _write(tmp_path, {**CLEAN, name: text})
    problems = upward_imports(root)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_checker_ignores_type_checking_imports(tmp_path):
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from instructjax.train import TrainState\n"
    root = _write(tmp_path, {**CLEAN, "models/typed.py": text})
    assert upward_imports(root) == subpackage_cycles(root) == []


def test_checker_names_a_third_party_import_of_the_formulas(tmp_path):
    root = _write(tmp_path, {**CLEAN, "rl/kl.py": "import optax\n"})
    assert formula_third_party(root) == [
        "instructjax.rl.kl (line 1) imports optax: the formulas import only ['jax', 'numpy'] and the standard library"]


def test_checker_names_a_cycle(tmp_path):
    # Same layer, so only the cycle check catches it.
    root = _write(tmp_path, {**CLEAN, "checkpoints/__init__.py": "from instructjax.data import load\n",
                             "data/__init__.py": "from instructjax.checkpoints import save\n"})
    layers = {**LAYERS}
    assert upward_imports(root, layers) == []
    (problem,) = subpackage_cycles(root)
    assert problem.startswith("import cycle between checkpoints, data: ")
    assert "instructjax.data (line 1) imports instructjax.checkpoints" in problem


def test_checker_names_a_module_without_a_layer(tmp_path):
    root = _write(tmp_path, {**CLEAN, "newthing.py": "\n"})
    assert unlayered(root) == ["instructjax.newthing"]
