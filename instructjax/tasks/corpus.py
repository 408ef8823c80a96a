"""A pretraining-text corpus available offline on every machine: the docstrings of Python's
standard library, read from its source files with `ast` (no module is ever imported: some,
like `antigravity` or `this`, act when imported)."""

from __future__ import annotations

import ast
import gc
import inspect
import json
import os
import pathlib
import re
import sysconfig
from collections.abc import Iterable, Iterator

# Folders whose docstrings are test scaffolding, a separate application or third-party code.
SKIPPED_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"})
_MIN_ASCII_LETTERS = 0.6  # of the non-space characters: keeps prose, drops tables and code listings
_NOT_ASCII_LETTER = re.compile(r"[^A-Za-z]+")
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)  # what can hold a class or function


def stdlib_docstrings(max_records: int | None = None, min_chars: int = 200) -> list[str]:
    """English docstrings (module, class, function) of the standard library of this Python.

    Cleaned with `inspect.cleandoc`, at least `min_chars` long, mostly ASCII letters, deduplicated,
    in a fixed order (folders and files sorted, then source order).
    """
    texts, seen = [], set()
    for text in _docstrings(pathlib.Path(sysconfig.get_paths()["stdlib"])):
        if len(text) < min_chars or text in seen or not _is_prose(text):
            continue
        seen.add(text)
        texts.append(text)
        if max_records is not None and len(texts) >= max_records:
            break
    return texts


def _docstrings(root: pathlib.Path) -> Iterator[str]:
    for path in _source_files(root):
        tree = _parse(path)
        if tree is None:
            continue
        for node in _documented(tree):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield inspect.cleandoc(doc).strip()


def _source_files(root: pathlib.Path) -> Iterator[pathlib.Path]:
    """The .py files under `root` outside SKIPPED_DIRS, folders and files in sorted order."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield pathlib.Path(folder, name)


def _documented(node: ast.AST) -> Iterator[ast.AST]:
    """The module, class and function nodes in `node`, in source order (statements only: fast)."""
    if isinstance(node, _DOCUMENTED):
        yield node
    for _, value in ast.iter_fields(node):
        if isinstance(value, list):
            for child in value:
                if isinstance(child, _STATEMENTS):
                    yield from _documented(child)


def _parse(path: pathlib.Path) -> ast.Module | None:
    """The syntax tree of a file, None if it is not Python of this version.

    The cyclic garbage collector is paused while parsing: its passes over the many new nodes
    (which hold no cycles) would triple the time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return None
    finally:
        if enabled:
            gc.enable()


def _is_prose(text: str) -> bool:
    letters = len(_NOT_ASCII_LETTER.sub("", text))
    return letters >= _MIN_ASCII_LETTERS * len("".join(text.split()))


def write_pretraining_jsonl(path: str | os.PathLike, texts: Iterable[str]) -> int:
    """Write `texts` as pretraining_text records {"text"}, one a line; the number written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for n, text in enumerate(texts, start=1):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text {n - 1} is empty or not a string: {text!r}")
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return n
