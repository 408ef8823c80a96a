"""A terminal session where a person ranks sampled completions, written as comparisons records.

Samples are JSONL records {"prompt", "completions"}. Each answer is appended to the output at
once (flushed and fsync'd), so a killed session loses nothing. The output is a plain comparisons
file; a restarted session skips the samples whose (prompt, completions) it already holds. Skipped
samples are not written, so the next session asks them again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

from instructjax.datasets.jsonl import RecordError, read_jsonl, read_objects, validate
from instructjax.labelers.ranking import rank_to_comparison, unique_completions

MAX_COMPLETIONS = 26  # lettered (a) to (z)
_RECORD_START = b'{"prompt": '  # how every record this session writes begins
QUESTION = "Rank best first (e.g. 'b a c', '=' for ties: 'b=a c'), s = skip, q = quit: "

Prompt = str | list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class SessionSummary:
    """What a session did. Duplicate and blank completions are left out of a sample (a comparison
    cannot hold them); samples left with fewer than 2, or repeating an earlier one, are counted and
    never shown."""

    total: int  # distinct samples that can be ranked
    answered_before: int  # of those, answered in earlier sessions
    labelled: int  # answered in this session
    skipped: int  # skipped in this session (asked again next time)
    unrankable: int  # samples with fewer than 2 distinct non-blank completions
    repeated: int  # samples identical to an earlier one


def parse_ranking(answer: str, k: int) -> list[int]:
    """Dense ranks from a best-first answer ("b a c", "b=a c" for a tie); ValueError saying what is wrong."""
    letters = [chr(ord("a") + i) for i in range(k)]
    groups = re.sub(r"\s*=\s*", "=", answer.strip().lower()).split()
    if not groups:
        raise ValueError("empty answer")
    ranks: dict[str, int] = {}
    for rank, group in enumerate(groups):
        for letter in group.split("="):
            if letter not in letters:
                what = "'=' needs a letter on each side" if not letter else f"unknown completion {letter!r}"
                raise ValueError(f"{what}: the completions are a to {letters[-1]}, separated by spaces")
            if letter in ranks:
                raise ValueError(f"({letter}) is ranked twice")
            ranks[letter] = rank
    missing = [f"({x})" for x in letters if x not in ranks]
    if missing:
        raise ValueError(f"{', '.join(missing)} not ranked: rank every completion")
    if len(groups) == 1:
        raise ValueError("all completions tied: that records no preference; rank them or type s to skip")
    return [ranks[x] for x in letters]


def label_session(samples_path: str | os.PathLike, output_path: str | os.PathLike, *,
                  input_fn: Callable[[str], str] = input, print_fn: Callable[..., None] = print) -> SessionSummary:
    """Ask for a ranking of every sample not yet in `output_path` and append each answer there.

    Answers: letters best first, '=' for ties, "s" to skip, "q" (or end of input) to quit.
    Invalid answers are explained and asked again.
    """
    samples, unrankable, repeated = _distinct_samples(samples_path)
    answered = _answered(output_path, print_fn)
    answered_before = sum(_key(p, c) in answered for p, c in samples)
    done, labelled, skipped = answered_before, 0, 0
    print_fn(f"Appending answers to {os.path.abspath(output_path)}; {done}/{len(samples)} labelled")
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "a", encoding="utf-8") as out:
        for number, (prompt, completions) in enumerate(samples, start=1):
            if _key(prompt, completions) in answered:
                continue
            _show(print_fn, number, len(samples), prompt, completions)
            ranks = _ask(input_fn, print_fn, len(completions))
            if ranks == "q":
                break
            if ranks == "s":
                skipped += 1
                continue
            record = rank_to_comparison(prompt, completions, ranks)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            done, labelled = done + 1, labelled + 1
            print_fn(f"{done}/{len(samples)} labelled")
    summary = SessionSummary(len(samples), answered_before, labelled, skipped, unrankable, repeated)
    print_fn(f"This session: {labelled} labelled, {skipped} skipped (asked again next session); "
             f"{done}/{len(samples)} labelled in all. Not shown: {unrankable} sample(s) with fewer than 2 "
             f"distinct non-blank completions, {repeated} repeated sample(s).")
    return summary


def _ask(input_fn: Callable[[str], str], print_fn: Callable[..., None], k: int) -> list[int] | str:
    """Ranks, or "s" (skip) or "q" (quit, also at end of input or Ctrl-C)."""
    while True:
        try:
            answer = input_fn(QUESTION)
        except (EOFError, KeyboardInterrupt):
            return "q"
        if answer.strip().lower() in ("s", "q"):
            return answer.strip().lower()
        try:
            return parse_ranking(answer, k)
        except ValueError as e:
            print_fn(f"Invalid answer {answer.strip()!r}: {e}. Please answer again.")


def _show(print_fn: Callable[..., None], number: int, total: int, prompt: Prompt, completions: list[str]) -> None:
    print_fn(f"\n=== Sample {number}/{total} ===")
    if isinstance(prompt, str):
        print_fn(_indent(prompt))
    else:
        for message in prompt:
            print_fn(_indent(f"[{message['role']}] {message['content']}"))
    for i, completion in enumerate(completions):
        print_fn(f"({chr(ord('a') + i)}) " + _indent(completion).lstrip())


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _key(prompt: Prompt, completions: list[str]) -> tuple[str, tuple[str, ...]]:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False), tuple(completions)


def _distinct_samples(path: str | os.PathLike) -> tuple[list[tuple[Prompt, list[str]]], int, int]:
    """The distinct rankable samples (see `unique_completions`), the unrankable and repeated counts."""
    samples, keys, unrankable, repeated = [], set(), 0, 0
    for number, obj in read_objects(path):
        try:
            prompt, completions = _sample(obj)
        except ValueError as e:
            raise RecordError(os.fspath(path), number, str(e)) from None
        completions = unique_completions(completions)
        key = _key(prompt, completions)
        if len(completions) < 2:
            unrankable += 1
        elif key in keys:
            repeated += 1
        else:
            keys.add(key)
            samples.append((prompt, completions))
    return samples, unrankable, repeated


def _sample(obj: Any) -> tuple[Prompt, list[str]]:
    if not isinstance(obj, dict) or set(obj) != {"prompt", "completions"}:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"a sample is an object with exactly 'prompt' and 'completions', got {got}")
    prompt, completions = validate("prompts", {"prompt": obj["prompt"]})["prompt"], obj["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise ValueError("field 'completions' must be a list of strings")
    if len(completions) > MAX_COMPLETIONS:
        raise ValueError(f"{len(completions)} completions; at most {MAX_COMPLETIONS} can be lettered")
    return prompt, completions


def _answered(path: str | os.PathLike, print_fn: Callable[..., None]) -> set[tuple[str, tuple[str, ...]]]:
    """The (prompt, completions) keys already in the output. The whole file is checked before it is
    touched: only a last line torn by a killed session (a record started, no newline) is dropped."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    tail = data[data.rfind(b"\n") + 1:]
    try:
        keys = _keys(path)
    except RecordError as e:
        if not (tail.startswith(_RECORD_START) and e.line == data.count(b"\n") + 1):
            raise
        keys = None
    if tail.strip():
        with open(path, "rb+") as f:
            if keys is None:
                f.truncate(len(data) - len(tail))
                print_fn(f"{path}: dropped an incomplete last line (an earlier session was killed while writing)")
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")  # a complete last record without a newline: keep it
    return _keys(path) if keys is None else keys


def _keys(path: str | os.PathLike) -> set[tuple[str, tuple[str, ...]]]:
    return {_key(r.record["prompt"], r.record["completions"])
            for r in read_jsonl("comparisons", path, all_tied="skip") if r.record is not None}
