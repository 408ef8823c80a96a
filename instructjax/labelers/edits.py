"""Text edits of the demonstrator, one job each: cut a text at a clean boundary, drop words or
commas without gluing words together, append a sentence or a clause, lay sentences out as bullets
or paragraphs, wrap a text in quotes or JSON. Pure functions of strings; words and sentences are
counted as the task's constraints count them (`instructjax.tasks`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence

from instructjax.tasks.constraints import sentence_spans, split_words, word_pattern, word_spans

# Words a cut should not end on: articles, prepositions, conjunctions, pronouns and auxiliaries.
_DANGLING = frozenset("""a an the and or but nor so yet of to in on at by for from with about into onto over
under between through after before during like than then if when while because since until as that which who
whose this these those its their his her my your our is are was were be been being will would can could should
must may might not""".split())
_TITLE_SMALL = frozenset("a an the and or of to in on at for with from by".split())  # lowercase inside titles
_END_MARK = re.compile(r"[.!?]+[\"'”’)\]]*$")  # a sentence end mark at the end, closing quotes allowed
_TRAILING = re.compile(r"[\s,;:\-–—(\[{/&]+$")  # what a cut leaves dangling at its end
_LETTER = re.compile(r"[^\W\d_]")
_CLAUSE_END = re.compile(r"(?<=[^\W_])[\"'”’)\]]*(?:[,;:]|\s+[-–—])(?=\s)")
_LIST_MARKER = re.compile(r"^[ \t]*(?:[*-]|\d+[.)])[ \t]+", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CAPITALIZE = "\x00"  # marks where a removed capitalised word started a sentence
_AT_SENTENCE_START = re.compile(r"(?:^|[.!?][\"'”’)\]]*\s+|\n[ \t]*)$")


def is_terminated(text: str) -> bool:
    """Whether `text` ends with `.`, `!` or `?` (closing quotes or brackets after it allowed)."""
    return _END_MARK.search(text.rstrip()) is not None


def close_sentence(text: str) -> str:
    """`text` stripped, as a finished sentence: unchanged if it ends with an end mark; else trailing
    punctuation and the last sentence's dangling words (articles, prepositions, conjunctions; not its
    first word) dropped, an open double quote or bracket closed and a `.` added. "" without words."""
    text = text.strip()
    if is_terminated(text):
        return text
    text = _TRAILING.sub("", text)
    sentences = sentence_spans(text)
    if not sentences:
        return ""
    spans = word_spans(text)
    first = next(i for i, (start, _) in enumerate(spans) if start >= sentences[-1][0])  # of the last sentence
    while len(spans) - 1 > first and text[slice(*spans[-1])].lower() in _DANGLING:
        text = _TRAILING.sub("", text[:spans.pop()[0]])
    brackets = ")" * max(0, text.count("(") - text.count(")"))
    return text + brackets + "." + ('"' if text.count('"') % 2 else "")


def cut_unfinished(text: str) -> str:
    """`text` without its last sentence when that one is unfinished (no end mark and no line break
    after it), as in a sample cut off by the token budget; "" when no finished sentence is left."""
    spans = sentence_spans(text)
    if not spans:
        return ""
    start, end = spans[-1]
    if is_terminated(text[:end]) or "\n" in text[end:]:
        return text.strip()
    return text[:start].rstrip()


def cut_candidates(text: str) -> dict[str, Iterator[tuple[str, int]]]:
    """Beginnings of `text` that end cleanly (`close_sentence`), longest first, each with the index
    in `text` where it ends, by kind: up to a "sentence" end or line end, up to a "clause" end (`,`,
    `;`, `:` or dash), up to any "word". Made lazily: a search stops at the first that fits."""
    ends = {"sentence": [end for _, end in sentence_spans(text)],
            "clause": [m.start() for m in _CLAUSE_END.finditer(text)], "word": [end for _, end in word_spans(text)]}
    return {kind: _closed_cuts(((text[:end], end) for end in reversed(at))) for kind, at in ends.items()}


def sentence_windows(text: str) -> list[tuple[str, int]]:
    """Runs of whole sentences of `text` after its first one, most words first, each with the index
    in `text` where it ends: what is left when an opening ("Sure!") is dropped as well."""
    spans = sentence_spans(text)
    windows = list(_closed_cuts((text[start:end], end) for i, (start, _) in enumerate(spans) if i
                                for _, end in spans[i:]))
    return sorted(windows, key=lambda w: -len(split_words(w[0])))


def _closed_cuts(cuts: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """The cuts closed with `close_sentence`, each once; none whose last sentence has no letter (a
    list number such as "2.")."""
    previous = None
    for cut, end in cuts:
        cut = close_sentence(cut)
        spans = sentence_spans(cut)
        if cut != previous and spans and _LETTER.search(cut, *spans[-1]):
            previous = cut
            yield cut, end


def tidy(text: str) -> str:
    """Spacing and punctuation left over by removals: one space between words, none before `,.;:!?`,
    no line or sentence opening with stray punctuation, no empty brackets, no trailing spaces."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"(?m)^[ \t]*[.!?,;:]+[ \t]*", "", text)
    text = re.sub(r"([.!?])[ \t]+[.!?,;:]+(?=\s|$)", r"\1", text)
    text = re.sub(r"[ \t]+([,.;:!?])", r"\1", text)
    text = re.sub(r"[,;:]+(?=[.!?])", "", text)
    text = re.sub(r"\([ \t]*\)", "", text)
    return re.sub(r"(?m)[ \t]+$", "", text).strip()


def remove_words(text: str, words: Sequence[str]) -> str:
    """`text` without `words` (whole words, any case: as avoid_words finds them). A pair of commas
    around a word goes with it ("It was, basically, fine" -> "It was fine"), a word's comma after it
    too; a sentence that started with a removed word starts with a capital again."""
    alternatives = "|".join(word_pattern(w).pattern for w in sorted(words, key=len, reverse=True))
    pattern = re.compile(rf"(,[ \t]*)?(?:{alternatives})(?:-(?=\w))?([ \t]*,)?", re.IGNORECASE)

    def replace(m: re.Match) -> str:
        before, after = m.group(1), m.group(2)
        start = m.start() + len(before or "")
        if not before and m.string[start].isupper() and _AT_SENTENCE_START.search(m.string[:start]):
            return _CAPITALIZE
        return "," if before and not after else " " if before else ""

    removed, count = pattern.subn(replace, text)
    if not count:
        return text
    removed = re.sub(rf"{_CAPITALIZE}([^\w]*)(\w)", lambda m: m.group(1) + m.group(2).upper(), removed)
    return tidy(removed.replace(_CAPITALIZE, ""))


def remove_commas(text: str) -> str:
    """`text` without commas: thousands separators close up (1,000 -> 1000), other commas become a
    space, so that no two words are glued together."""
    if "," not in text:
        return text
    return tidy(re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text).replace(",", " "))


def append_sentence(text: str, sentence: str) -> str:
    """`text` followed by `sentence`: on a line of its own after a list item, else after an end mark."""
    text = text.rstrip()
    if not split_words(text):
        return sentence
    if _LIST_MARKER.match(text.rsplit("\n", 1)[-1]):
        return f"{text}\n{sentence}"
    return f"{close_sentence(text)} {sentence}"


def append_clause(text: str, clause: str) -> str:
    """`text` with `clause` joined to its last sentence, before the end mark ("Tea is good." and
    "and hot" -> "Tea is good and hot."): more words, no more sentences. `text` must hold a word."""
    text = close_sentence(text)
    mark = _END_MARK.search(text)
    return f"{text[:mark.start()]} {clause}{text[mark.start():]}"


def join_sentence(text: str, sentence: str) -> str | None:
    """`text` and `sentence` as one sentence, joined by a semicolon ("Tea is good." and "It is hot."
    -> "Tea is good; it is hot."): more words, no more sentences. None unless `text` ends with one
    `.` or `!` (a question stays a question)."""
    text = text.rstrip()
    if not re.search(r"[^.!?][.!]$", text):
        return None
    first = split_words(sentence)[:1]
    keep_capital = not first or first[0] == "I" or first[0].startswith("I'") or first[0][1:2].isupper()
    return f"{text[:-1]}; {sentence if keep_capital else sentence[:1].lower() + sentence[1:]}"


def _groups(items: list[str], n: int) -> list[list[str]]:
    """`items` in `n` consecutive groups whose sizes differ by at most one (the larger first)."""
    if n == 0:
        return []
    size, extra = divmod(len(items), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def reflow(text: str, bullets: int | None, paragraphs: int | None) -> str:
    """The sentences of `text` as exactly `bullets` "* " items and/or `paragraphs` paragraphs
    separated by `***` lines (the bullets make up the last paragraph); list markers and `***` lines
    of `text` go. `text` unchanged when it has too few sentences for them."""
    plain = _LIST_MARKER.sub("", text)
    sentences = [close_sentence(plain[start:end]) for start, end in sentence_spans(plain)]
    n_paragraphs, in_last = paragraphs or 1, max(bullets or 0, 1)
    if len(sentences) < n_paragraphs - 1 + in_last:
        return text
    tail = min(max(in_last, len(sentences) // n_paragraphs), len(sentences) - (n_paragraphs - 1))
    head, last = sentences[:len(sentences) - tail], sentences[len(sentences) - tail:]
    blocks = [" ".join(group) for group in _groups(head, n_paragraphs - 1)]
    blocks.append("\n".join("* " + " ".join(g) for g in _groups(last, bullets)) if bullets else " ".join(last))
    return "\n***\n".join(blocks)


def wrap_json(text: str) -> str:
    """`text` as the JSON object {"answer": text} on one line: whitespace runs become one space and
    control characters go, so the only escapes are \\" and \\\\ and a change of case keeps it valid."""
    return json.dumps({"answer": " ".join(_CONTROL.sub(" ", text).split())}, ensure_ascii=False)


def wrap_quotes(text: str) -> str:
    """`text` in double quotes, its own double quotes turned into single ones; around several lines
    the quotes stand on lines of their own, so line-start markers (bullets) stay at a line start."""
    inner = text.strip().translate(str.maketrans({'"': "'", "“": "‘", "”": "’"}))
    return f'"\n{inner}\n"' if "\n" in inner else f'"{inner}"'


def title_case(phrase: str) -> str:
    """`phrase` with each word capitalised except small inner words: "the water cycle" -> "The Water Cycle"."""
    words = phrase.split()
    return " ".join(w if i and w.lower() in _TITLE_SMALL else w[:1].upper() + w[1:] for i, w in enumerate(words))
