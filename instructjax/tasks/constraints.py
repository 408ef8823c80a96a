"""Verifiable instructions in the manner of IFEval (Zhou et al. 2023, arXiv 2311.07911).

A `Constraint` is one family (e.g. "max_words"), its arguments (e.g. n=30) and the sentence put in
the prompt; `check(response)` says whether a response obeys it, with no model involved. Arguments
are sampled small enough that a ~50-token answer can satisfy them.

`constraints_of_prompt(text)` reads a prompt's constraints back from their sentences, for callers
that have only the prompt text (reward functions).

Counting rules: words are runs of letters or digits (inner apostrophes kept: "don't" is one word);
sentences are the pieces between `.`, `!` or `?` followed by a space, and line breaks, that hold a
letter or digit (so each bullet line is a sentence).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

MAX_WORDS = "max_words"
MIN_WORDS = "min_words"
MAX_SENTENCES = "max_sentences"
MIN_SENTENCES = "min_sentences"
LOWERCASE = "lowercase"
UPPERCASE = "uppercase"
NO_COMMAS = "no_commas"
END_PHRASE = "end_phrase"
QUOTED = "quoted"
INCLUDE_KEYWORDS = "include_keywords"
AVOID_WORDS = "avoid_words"
BULLETS = "bullets"
TITLE = "title"
PARAGRAPHS = "paragraphs"
JSON = "json"

FAMILIES = (MAX_WORDS, MIN_WORDS, MAX_SENTENCES, MIN_SENTENCES, LOWERCASE, UPPERCASE, NO_COMMAS, END_PHRASE,
            QUOTED, INCLUDE_KEYWORDS, AVOID_WORDS, BULLETS, TITLE, PARAGRAPHS, JSON)

# The arguments of each family and their kind: "n" a positive int, "phrase" a string, "words" a tuple
# of strings.
_ARGS: dict[str, tuple[str, ...]] = {family: () for family in FAMILIES}
_ARGS.update({MAX_WORDS: ("n",), MIN_WORDS: ("n",), MAX_SENTENCES: ("n",), MIN_SENTENCES: ("n",),
              BULLETS: ("n",), PARAGRAPHS: ("n",), END_PHRASE: ("phrase",), INCLUDE_KEYWORDS: ("words",),
              AVOID_WORDS: ("words",)})

# Choices of the samplers: short enough for answers of ~50 tokens (~35 words).
_CHOICES: dict[str, tuple[Any, ...]] = {
    MAX_WORDS: (15, 20, 25, 30),
    MIN_WORDS: (10, 15, 20),
    MAX_SENTENCES: (1, 2, 3),
    MIN_SENTENCES: (2, 3),
    BULLETS: (2, 3),
    PARAGRAPHS: (2, 3),
    END_PHRASE: ("Is there anything else I can help with?", "Hope this helps!",
                 "Let me know if you have any other questions.", "That is all for now."),
    INCLUDE_KEYWORDS: ("simple", "example", "people", "time", "future", "practice", "history", "daily",
                       "together", "world", "reason", "idea"),
    AVOID_WORDS: ("very", "really", "just", "also", "many", "great", "basically", "actually"),
}

# Families never combined, whatever their arguments: they contradict, or make no sense together.
CONFLICTING_FAMILIES: frozenset[frozenset[str]] = frozenset(frozenset(pair) for pair in (
    (LOWERCASE, UPPERCASE),
    (QUOTED, JSON), (QUOTED, END_PHRASE),
    (JSON, END_PHRASE), (JSON, BULLETS), (JSON, PARAGRAPHS), (JSON, MAX_SENTENCES), (JSON, MIN_SENTENCES),
    (END_PHRASE, LOWERCASE), (END_PHRASE, UPPERCASE),
))

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_BREAK = re.compile(r"[.!?]+(?=\s|$)|\n")
_BULLET = re.compile(r"^\s*[*-] ", re.MULTILINE)
TITLE_PATTERN = re.compile(r"<<[^<>\n]*[^\W_][^<>\n]*>>")  # a title: <<...>> holding a letter or digit
_PARAGRAPH_BREAK = re.compile(r"^[ \t]*\*\*\*[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*)\n```$", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Constraint:
    """One verifiable instruction: `family`, its `args` as sorted (key, value) pairs, and `text`."""

    family: str
    args: tuple[tuple[str, Any], ...]
    text: str

    def __post_init__(self):
        if _check_args(self.family, dict(self.args)) != self.args:
            raise ValueError(f"constraint {self.family!r}: args must be (key, value) pairs sorted by key, word "
                             f"lists as tuples; got {self.args!r}")

    def arg(self, key: str) -> Any:
        """The value of argument `key`."""
        return dict(self.args)[key]

    def check(self, response: str) -> bool:
        """Whether `response` obeys this constraint."""
        return _CHECKS[self.family](response, **dict(self.args))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: {"family", "args": {...}, "text"}; tuples become lists."""
        args = {k: list(v) if isinstance(v, tuple) else v for k, v in self.args}
        return {"family": self.family, "args": args, "text": self.text}

    @classmethod
    def from_dict(cls, obj: Any) -> "Constraint":
        """The constraint of `to_dict`'s form; ValueError naming the bad key or family."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"a constraint must be an object, got {type(obj).__name__}")
        if set(obj) != {"family", "args", "text"}:
            raise ValueError(f"a constraint has exactly the keys 'family', 'args', 'text'; got {sorted(obj)}")
        text = obj["text"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"constraint key 'text' must be a non-empty string, got {text!r}")
        if not isinstance(obj["args"], Mapping):
            raise ValueError(f"constraint key 'args' must be an object, got {type(obj['args']).__name__}")
        return cls(obj["family"], _check_args(obj["family"], obj["args"]), text)


def make_constraint(family: str, **args: Any) -> Constraint:
    """A constraint of `family` with the given arguments and its standard instruction sentence."""
    checked = _check_args(family, args)
    return Constraint(family, checked, _TEXTS[family](**dict(checked)))


def sample_constraint(family: str, rng: random.Random) -> Constraint:
    """A constraint of `family` with arguments drawn from the achievable choices."""
    if family not in FAMILIES:
        raise ValueError(f"unknown constraint family {family!r}; expected one of {FAMILIES}")
    names = _ARGS[family]
    if not names:
        return make_constraint(family)
    (name,) = names
    if name == "words":
        return make_constraint(family, words=tuple(rng.sample(_CHOICES[family], rng.randint(1, 2))))
    return make_constraint(family, **{name: rng.choice(_CHOICES[family])})


def compatible(a: Constraint, b: Constraint) -> bool:
    """Whether one response can obey both constraints (and the pair reads sensibly in one prompt)."""
    if a.family == b.family or frozenset((a.family, b.family)) in CONFLICTING_FAMILIES:
        return False
    pair = {a.family: a, b.family: b}
    families = pair.keys()
    if families == {MIN_WORDS, MAX_WORDS}:  # leave room between the bounds
        return pair[MAX_WORDS].arg("n") >= pair[MIN_WORDS].arg("n") + 10
    for family in (MIN_SENTENCES, BULLETS, PARAGRAPHS):  # each bullet or paragraph is a sentence at least
        if families == {MAX_SENTENCES, family}:
            return pair[family].arg("n") <= pair[MAX_SENTENCES].arg("n")
    if families == {MAX_SENTENCES, END_PHRASE}:  # the phrase is a sentence of its own
        return pair[MAX_SENTENCES].arg("n") >= 2
    if families == {INCLUDE_KEYWORDS, AVOID_WORDS}:
        return not {w.lower() for w in pair[INCLUDE_KEYWORDS].arg("words")} & {
            w.lower() for w in pair[AVOID_WORDS].arg("words")}
    if families == {END_PHRASE, MAX_WORDS}:  # room for ten words besides the phrase
        return pair[MAX_WORDS].arg("n") >= count_words(pair[END_PHRASE].arg("phrase")) + 10
    if families == {END_PHRASE, NO_COMMAS}:
        return "," not in pair[END_PHRASE].arg("phrase")
    if families == {END_PHRASE, AVOID_WORDS}:
        return _avoids(pair[END_PHRASE].arg("phrase"), pair[AVOID_WORDS].arg("words"))
    return True


def split_words(text: str) -> list[str]:
    """The words of `text`: runs of letters or digits, inner apostrophes kept."""
    return _WORD.findall(text)


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word of `text` (see `split_words`), for edits that cut at a word."""
    return [m.span() for m in _WORD.finditer(text)]


def count_words(text: str) -> int:
    """The number of words of `text` (see `split_words`)."""
    return len(split_words(text))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`: the pieces between sentence ends or line breaks that
    hold a letter or digit, each with its end mark (`.`, `!`, `?`) and without surrounding spaces."""
    spans, start = [], 0
    for end, next_start in [(m.start(), m.end()) for m in _SENTENCE_BREAK.finditer(text)] + [(len(text), len(text))]:
        piece = text[start:end]
        if _WORD.search(piece):
            stop = next_start if text[end:next_start] != "\n" else end  # keep the end mark, not the line break
            spans.append((start + len(piece) - len(piece.lstrip()), start + len(text[start:stop].rstrip())))
        start = next_start
    return spans


def count_sentences(text: str) -> int:
    """Sentences of `text`: pieces between sentence ends or line breaks that hold a letter or digit."""
    return len(sentence_spans(text))


def word_pattern(word: str) -> re.Pattern:
    """`word` as a whole word, any case: how include_keywords and avoid_words find a word."""
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)


def _check_args(family: Any, args: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The arguments of `family` as sorted pairs; ValueError naming the bad family or key."""
    if family not in FAMILIES:
        raise ValueError(f"unknown constraint family {family!r}; expected one of {FAMILIES}")
    expected = set(_ARGS[family])
    if set(args) != expected:
        missing, extra = sorted(expected - set(args)), sorted(set(args) - expected)
        raise ValueError(f"constraint {family!r}: missing argument(s) {missing}, unexpected argument(s) {extra}")
    checked = []
    for key in sorted(args):
        value = args[key]
        if key == "n" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"constraint {family!r}: argument 'n' must be a positive integer, got {value!r}")
        if key == "phrase" and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"constraint {family!r}: argument 'phrase' must be a non-empty string, got {value!r}")
        if key == "words":
            if (isinstance(value, str) or not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(w, str) and w.strip() for w in value)):
                raise ValueError(f"constraint {family!r}: argument 'words' must be a non-empty list of non-empty "
                                 f"strings, got {value!r}")
            value = tuple(value)
        checked.append((key, value))
    return tuple(checked)


def _has_word(text: str, word: str) -> bool:
    return word_pattern(word).search(text) is not None


def _avoids(text: str, words: tuple[str, ...]) -> bool:
    return not any(_has_word(text, w) for w in words)


def _quoted(text: str) -> bool:
    text = text.strip()
    return len(text) >= 2 and (text[0], text[-1]) in (('"', '"'), ("“", "”"))


def _is_json(text: str) -> bool:
    """The whole text, or the inside of one ```json fence around it, is a JSON object or array."""
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, (dict, list))


def _paragraphs(text: str, n: int) -> bool:
    pieces = _PARAGRAPH_BREAK.split(text)
    return len(pieces) == n and all(p.strip() for p in pieces)


_CHECKS: dict[str, Callable[..., bool]] = {
    MAX_WORDS: lambda r, n: count_words(r) <= n,
    MIN_WORDS: lambda r, n: count_words(r) >= n,
    MAX_SENTENCES: lambda r, n: count_sentences(r) <= n,
    MIN_SENTENCES: lambda r, n: count_sentences(r) >= n,
    LOWERCASE: lambda r: any(c.islower() for c in r) and not any(c.isupper() for c in r),
    UPPERCASE: lambda r: any(c.isupper() for c in r) and not any(c.islower() for c in r),
    NO_COMMAS: lambda r: bool(r.strip()) and "," not in r,
    END_PHRASE: lambda r, phrase: r.strip().endswith(phrase),
    QUOTED: _quoted,
    INCLUDE_KEYWORDS: lambda r, words: all(_has_word(r, w) for w in words),
    AVOID_WORDS: lambda r, words: bool(r.strip()) and _avoids(r, words),
    BULLETS: lambda r, n: len(_BULLET.findall(r)) == n,
    TITLE: lambda r: TITLE_PATTERN.search(r) is not None,
    PARAGRAPHS: _paragraphs,
    JSON: _is_json,
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _quoted_list(words: tuple[str, ...], conjunction: str) -> str:
    return f" {conjunction} ".join(f'"{w}"' for w in words)


_TEXTS: dict[str, Callable[..., str]] = {
    MAX_WORDS: lambda n: f"Answer in at most {n} words.",
    MIN_WORDS: lambda n: f"Your answer should contain at least {n} words.",
    MAX_SENTENCES: lambda n: f"Answer in at most {_plural(n, 'sentence')}.",
    MIN_SENTENCES: lambda n: f"Your answer should contain at least {n} sentences.",
    LOWERCASE: lambda: "Write your entire answer in lowercase letters, with no capital letters at all.",
    UPPERCASE: lambda: "Write your entire answer in capital letters only.",
    NO_COMMAS: lambda: "Do not use any commas in your answer.",
    END_PHRASE: lambda phrase: f'End your answer with the exact phrase "{phrase}" and nothing after it.',
    QUOTED: lambda: "Wrap your entire answer in double quotation marks.",
    INCLUDE_KEYWORDS: lambda words: (f"Include the {'keyword' if len(words) == 1 else 'keywords'} "
                                     f"{_quoted_list(words, 'and')} in your answer."),
    AVOID_WORDS: lambda words: (f"Do not use the {'word' if len(words) == 1 else 'words'} "
                                f"{_quoted_list(words, 'or')} in your answer."),
    BULLETS: lambda n: (f"Your answer must contain exactly {_plural(n, 'bullet point')}, each on its own line "
                        f'starting with "* ".'),
    TITLE: lambda: "Give your answer a title wrapped in double angular brackets, such as <<my title>>.",
    PARAGRAPHS: lambda n: (f"Write exactly {n} paragraphs, separated from each other by a line containing "
                           f"only ***."),
    JSON: lambda: "Format your entire answer as JSON; you may wrap it in a ```json code block.",
}


# Two argument values per kind that the sentences must show differently (1 and 2: singular and plural);
# the text all their sentences share is where a family's sentence starts.
_PROBE_ARGS: dict[str, tuple[Any, Any]] = {"n": (1, 2), "phrase": ("a", "b"), "words": (("a",), ("b", "c"))}
_LEADS: dict[str, str] = {
    family: os.path.commonprefix([_TEXTS[family](**{name: _PROBE_ARGS[name][i] for name in _ARGS[family]})
                                  for i in (0, 1)])
    for family in FAMILIES}


def parse_constraint(sentence: str) -> Optional[Constraint]:
    """The constraint whose standard sentence (`make_constraint`) is exactly `sentence`, or None."""
    for family in FAMILIES:
        if not sentence.startswith(_LEADS[family]):
            continue
        for args in _candidate_args(family, sentence):
            try:
                constraint = make_constraint(family, **args)
            except ValueError:
                continue
            if constraint.text == sentence:
                return constraint
    return None


def _candidate_args(family: str, sentence: str) -> Iterator[dict[str, Any]]:
    """Arguments that may have written `sentence` in `family`'s form (`parse_constraint` keeps the one
    that writes it exactly): each integer in it; the text between its first and last double quote."""
    if not _ARGS[family]:
        yield {}
        return
    (name,) = _ARGS[family]
    if name == "n":
        for digits in re.findall(r"\d+", sentence):
            yield {"n": int(digits)}
        return
    first, last = sentence.find('"'), sentence.rfind('"')
    if first == last:
        return
    quoted = sentence[first + 1:last]
    if name == "phrase":
        yield {"phrase": quoted}
    else:  # '"a" and "b"' or '"a" or "b"'
        for conjunction in (" and ", " or "):
            yield {"words": tuple(quoted.split(f'"{conjunction}"'))}


def constraints_of_prompt(prompt: str) -> tuple[Constraint, ...]:
    """The constraints a task prompt ends with, read back from their sentences (the inverse of
    `compose_prompt`); a ValueError naming the prompt when it ends with none."""
    constraints, rest = [], prompt
    while (found := _last_constraint(rest)) is not None:
        rest, constraint = found
        constraints.append(constraint)
    if not constraints:
        raise ValueError(f"prompt {prompt!r} does not end with a constraint sentence of the default task "
                         "(instructjax.tasks.constraints)")
    return tuple(reversed(constraints))


def _last_constraint(text: str) -> Optional[tuple[str, Constraint]]:
    """(the text before it, the constraint) of the constraint sentence that ends `text`, if any;
    sentences are joined by single spaces (`compose_prompt`)."""
    starts = [0] + [i + 1 for i, char in enumerate(text) if char == " "]
    for start in reversed(starts):  # the shortest ending first
        constraint = parse_constraint(text[start:])
        if constraint is not None:
            return text[:max(start - 1, 0)], constraint
    return None
