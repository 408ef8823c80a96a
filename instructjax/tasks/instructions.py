"""The default task: everyday requests with one or two verifiable constraints.

    prompts = make_prompts("train", 256, seed=0)
    prompts[0].prompt   # 'Explain chess in simple terms. Answer in at most 20 words.'
    all(c.check(response) for c in prompts[0].constraints)

Records on disk (JSONL, one a line): {"prompt", "topic", "constraints": [Constraint.to_dict()]}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

from instructjax.tasks.constraints import FAMILIES, Constraint, compatible, sample_constraint
from instructjax.tasks.topics import REQUESTS, split_topics

SPLITS = ("train", "validation", "test")
_RETRIES = 100  # draws per prompt before accepting a duplicate (only when num exceeds the distinct ones)


def compose_prompt(request: str, constraints: Sequence[Constraint]) -> str:
    """The user message: the request followed by the constraint sentences."""
    return " ".join([request, *(c.text for c in constraints)])


@dataclasses.dataclass(frozen=True)
class TaskPrompt:
    """A prompt of the task: the full user message, its request, topic and constraints."""

    prompt: str
    request: str
    topic: str
    constraints: tuple[Constraint, ...]

    def __post_init__(self):
        if self.prompt != compose_prompt(self.request, self.constraints):
            raise ValueError(f"prompt {self.prompt!r} is not the request followed by the constraint texts")

    @classmethod
    def create(cls, request: str, topic: str, constraints: Sequence[Constraint]) -> "TaskPrompt":
        """The task prompt whose text is composed from `request` and `constraints`."""
        return cls(compose_prompt(request, constraints), request, topic, tuple(constraints))

    def to_record(self) -> dict[str, Any]:
        """The JSON record: {"prompt", "topic", "constraints": [dicts]}."""
        return {"prompt": self.prompt, "topic": self.topic, "constraints": [c.to_dict() for c in self.constraints]}

    @classmethod
    def from_record(cls, record: Any, where: str) -> "TaskPrompt":
        """The task prompt of a `to_record` record; ValueError starting with `where` (e.g. "f.jsonl:3")."""
        try:
            if not isinstance(record, dict) or set(record) != {"prompt", "topic", "constraints"}:
                got = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"expected an object with exactly 'prompt', 'topic', 'constraints'; got {got}")
            prompt, topic, items = record["prompt"], record["topic"], record["constraints"]
            for key, value in (("prompt", prompt), ("topic", topic)):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"field {key!r} must be a non-empty string, got {value!r}")
            if not isinstance(items, list):
                raise ValueError(f"field 'constraints' must be a list, got {type(items).__name__}")
            constraints = []
            for i, item in enumerate(items):
                try:
                    constraints.append(Constraint.from_dict(item))
                except ValueError as e:
                    raise ValueError(f"constraint {i}: {e}") from None
            suffix = compose_prompt("", constraints)
            request = prompt[:len(prompt) - len(suffix)]
            if not prompt.endswith(suffix) or not request.strip():
                raise ValueError("field 'prompt' must be a request followed by the constraint texts")
            return cls(prompt, request, topic, tuple(constraints))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def make_prompts(split: str, num: int, seed: int, families: tuple[str, ...] = FAMILIES,
                 max_constraints: int = 2) -> list[TaskPrompt]:
    """`num` task prompts of `split`, each with 1 to `max_constraints` compatible constraints.

    Deterministic given (split, num, seed); prompts are distinct unless `num` exceeds what the
    templates, topics and families can give. "test" topics never occur in the other splits.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}; unknown: {unknown}")
    if max_constraints < 1:
        raise ValueError(f"max_constraints must be >= 1, got {max_constraints}")
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    rng = random.Random(f"instructjax.tasks:{split}:{seed}")
    topics = split_topics(split)
    prompts, seen = [], set()
    while len(prompts) < num:
        for _ in range(_RETRIES):
            candidate = _draw(rng, topics, families, max_constraints)
            if candidate.prompt not in seen:
                break
        seen.add(candidate.prompt)
        prompts.append(candidate)
    return prompts


def _draw(rng: random.Random, topics: tuple[str, ...], families: tuple[str, ...],
          max_constraints: int) -> TaskPrompt:
    topic = rng.choice(topics)
    request = rng.choice(REQUESTS).format(topic=topic)
    constraints: list[Constraint] = []
    for _ in range(rng.randint(1, max_constraints)):
        for _ in range(_RETRIES):  # a compatible constraint, if one exists
            candidate = sample_constraint(rng.choice(families), rng)
            if all(compatible(candidate, c) for c in constraints):
                constraints.append(candidate)
                break
    return TaskPrompt.create(request, topic, constraints)


def write_records(path: str | os.PathLike, prompts: Iterable[TaskPrompt]) -> None:
    """Write task prompts as JSONL records, one a line."""
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(p.to_record(), ensure_ascii=False) + "\n")


def read_records(path: str | os.PathLike) -> list[TaskPrompt]:
    """The task prompts of a JSONL file written by `write_records`; errors name the file and line."""
    path = os.fspath(path)
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: malformed JSON at column {e.colno}: {e.msg}") from None
            prompts.append(TaskPrompt.from_record(record, f"{path}:{number}"))
    return prompts
