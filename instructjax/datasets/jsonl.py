"""Reading and validating the JSONL records of docs/data.md; every error names the file and line.

A record is one JSON object a line. The four kinds and their fields:

- demonstrations: `prompt`, `response`
- comparisons: `prompt`, `completions` (K >= 2 distinct strings), `ranking` (K ints, 0 = best,
  ties allowed); or `prompt`, `chosen`, `rejected`, which becomes K = 2 with ranking [0, 1]
- prompts: `prompt`
- pretraining_text: `text`

A prompt is a non-empty string or a non-empty list of chat messages `{"role", "content"}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

KINDS = ("demonstrations", "comparisons", "prompts", "pretraining_text")
ROLES = ("system", "user", "assistant", "tool")
SKIP_REASONS = ("overlong", "all_tied")
ALL_TIED_POLICIES = ("error", "skip")
ALL_TIED_ADVICE = "to skip such records, set --config.data.all_tied=skip (DatasetConfig all_tied='skip')"

# The accepted field sets of each kind; comparisons have two forms.
_FIELDS = {
    "demonstrations": ({"prompt", "response"},),
    "comparisons": ({"prompt", "completions", "ranking"}, {"prompt", "chosen", "rejected"}),
    "prompts": ({"prompt"},),
    "pretraining_text": ({"text"},),
}


class RecordError(ValueError):
    """A bad record or line; the message starts with `file:line:`."""

    def __init__(self, path: str, line: int, what: str):
        super().__init__(f"{path}:{line}: {what}")
        self.path, self.line, self.what = path, line, what


class _Bad(ValueError):
    """Raised by the checks below; `read_jsonl` adds the file and line."""


class _AllTied(Exception):
    """A comparison whose completions all share one rank: it has no ordered pair to learn from."""


class ParsedLine(NamedTuple):
    """One non-blank line: its number (1-based), the record, or why it was skipped."""

    line: int
    record: dict[str, Any] | None
    skipped: str | None


def check_kind(kind: str) -> str:
    """`kind` if it is one of KINDS, else a ValueError listing them."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    return kind


def read_jsonl(kind: str, path: str | os.PathLike, *, max_chars: int = 0,
               all_tied: str = "error") -> Iterator[ParsedLine]:
    """Validated records of `kind` from a JSONL file, in file order; blank lines are ignored.

    Records whose text is longer than `max_chars` characters (0: no limit) are yielded as skipped
    ("overlong"); comparisons whose completions are all tied raise, or are skipped ("all_tied")
    with `all_tied="skip"`. Any other problem raises RecordError naming the file and line.
    """
    check_kind(kind)
    if all_tied not in ALL_TIED_POLICIES:
        raise ValueError(f"all_tied must be one of {ALL_TIED_POLICIES}, got {all_tied!r}")
    path = os.fspath(path)
    for number, obj in read_objects(path):
        try:
            record = validate(kind, obj)
        except _Bad as e:
            raise RecordError(path, number, str(e)) from None
        except _AllTied as e:
            if all_tied == "error":
                raise RecordError(path, number, f"{e} ({ALL_TIED_ADVICE})") from None
            yield ParsedLine(number, None, "all_tied")
            continue
        if max_chars and text_length(kind, record) > max_chars:
            yield ParsedLine(number, None, "overlong")
            continue
        yield ParsedLine(number, record, None)


def read_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) of each non-blank line; RecordError naming the file and line for
    bytes that are not UTF-8, malformed JSON (with its column), a non-object or a repeated key."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise RecordError(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if text.strip():
                try:
                    yield number, _parse(text)
                except _Bad as e:
                    raise RecordError(path, number, str(e)) from None


def _parse(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        where = " (end of line)" if e.pos >= len(text) else ""
        raise _Bad(f"malformed JSON at column {e.pos + 1}{where}: {e.msg}") from None
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {_type(obj)}")
    return obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Bad(f"duplicate key {key!r} in a JSON object")
    return obj


def validate(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The record of `kind` in `obj`, normalised (chosen/rejected -> completions and ranking)."""
    fields = _matching_fields(kind, obj)
    if kind == "pretraining_text":
        return {"text": _text(obj, "text")}
    record = {"prompt": _prompt(obj["prompt"])}
    if kind == "demonstrations":
        record["response"] = _text(obj, "response")
    elif kind == "comparisons":
        if "chosen" in fields:
            completions, ranking = [_text(obj, "chosen"), _text(obj, "rejected")], [0, 1]
        else:
            completions, ranking = _completions(obj["completions"]), obj["ranking"]
        _check_distinct(completions)
        record["completions"], record["ranking"] = completions, _ranking(ranking, len(completions))
    return record


def text_length(kind: str, record: dict[str, Any]) -> int:
    """Characters of all the text of a record (prompt messages, response, completions, text)."""
    prompt = record.get("prompt", "")
    n = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt)
    return (n + len(record.get("response", "")) + sum(map(len, record.get("completions", ())))
            + len(record.get("text", "")))


def _matching_fields(kind: str, obj: dict[str, Any]) -> set[str]:
    """The accepted field set `obj` has exactly; otherwise what is missing or extra."""
    keys = set(obj)
    forms = _FIELDS[kind]
    for fields in forms:
        if keys == fields:
            return fields
    # Report against the form the record is closest to.
    fields = min(forms, key=lambda f: len(f ^ keys))
    missing, extra = sorted(fields - keys), sorted(keys - fields)
    problems = []
    if missing:
        problems.append("missing field(s) " + ", ".join(map(repr, missing)))
    if extra:
        problems.append("unexpected field(s) " + ", ".join(map(repr, extra)))
    expected = " or ".join("{" + ", ".join(sorted(f)) + "}" for f in forms)
    raise _Bad(f"{'; '.join(problems)} for a {kind} record (expected fields {expected})")


def _text(obj: dict[str, Any], field: str) -> str:
    value = obj[field]
    if not isinstance(value, str):
        raise _Bad(f"field {field!r} must be a string, got {_type(value)}")
    if not value.strip():
        raise _Bad(f"field {field!r} is empty")
    return value


def _prompt(value: Any) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("field 'prompt' is empty")
        return value
    if not isinstance(value, list):
        raise _Bad(f"field 'prompt' must be a string or a list of messages, got {_type(value)}")
    if not value:
        raise _Bad("field 'prompt' is an empty list of messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise _Bad(f"prompt message {i} must be an object with exactly 'role' and 'content', got {message!r}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _Bad(f"prompt message {i}: role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str):
            raise _Bad(f"prompt message {i}: content must be a string, got {_type(content)}")
        if not content.strip():
            raise _Bad(f"prompt message {i}: content is empty")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _completions(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _Bad(f"field 'completions' must be a list of strings, got {_type(value)}")
    if len(value) < 2:
        raise _Bad(f"field 'completions' needs K >= 2 completions, got {len(value)}")
    for i, c in enumerate(value):
        if not c.strip():
            raise _Bad(f"completion {i} is empty")
    return value


def _check_distinct(completions: list[str]) -> None:
    first = {}
    for i, c in enumerate(completions):
        if c in first:
            raise _Bad(f"completions {first[c]} and {i} are identical (duplicate completions)")
        first[c] = i


def _ranking(value: Any, k: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in value):
        raise _Bad(f"field 'ranking' must be a list of {k} integers, got {value!r}")
    if len(value) != k:
        raise _Bad(f"field 'ranking' has {len(value)} entries for K = {k} completions")
    bad = [r for r in value if not 0 <= r < k]
    if bad:
        raise _Bad(f"ranking values must be in [0, {k - 1}] (0 = best), got {bad[0]}")
    if len(set(value)) == 1:
        raise _AllTied(f"all {k} completions are tied (ranking {value})")
    return value


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__
