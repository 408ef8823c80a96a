"""A simulated labeler that writes demonstrations (InstructGPT step 1, Ouyang et al. 2022): it takes
a model sample and edits it until it meets every constraint of its prompt, so that SFT sees answers
to families the initial model never gets right by itself (rejection sampling only picks the best of K).

The edits, in this order, each only where its constraint needs it:

1. cut-off: a sample cut off by the token budget (`finished=False`) loses its unfinished last
   sentence; only if that fails (e.g. nothing would be left), the sentence is closed with a period;
2. end_phrase: the phrase's last occurrence and anything after it go (the phrase returns in step 6);
   title: an existing `<<title>>` is taken out (it returns on top in step 6), else one is made from
   the topic;
3. avoid_words, no_commas: the words and the commas are removed, from the sample and from every
   sentence added later;
4. max_words, max_sentences: the sample is cut to the longest beginning whose whole answer (title,
   additions, end phrase, JSON key included) meets the limits: at a sentence end when that keeps at
   least `CLEAN_CUT_SHARE` of the words of the longest possible cut, else at a clause end (`,;:`,
   dash), else after a word; a cut inside a sentence drops dangling words and ends with a period.
   A cut that would keep fewer than `MIN_ANSWER_WORDS` words (a bare "Sure!") takes the longest run
   of later whole sentences that fits instead;
5. include_keywords: one short sentence names the missing keywords ("In two words: time and
   practice."); min_words: the sentences the cut removed come back first, joined to the last one
   with a semicolon where they fit; min_words, min_sentences, bullets, paragraphs: short sentences
   about the prompt's topic are added until there are enough words and sentences; where a new
   sentence would break a limit, it is joined to the last sentence as a clause instead;
6. layout: bullets and paragraphs lay the sentences out anew (`edits.reflow`), the title goes on
   top (on the first line, or before the first sentence under max_sentences), the end phrase last;
7. format: json wraps the answer as {"answer": ...}, lowercase / uppercase convert it, quoted wraps
   it in double quotes.

The result is checked with every constraint's own `check` and must keep `closeness` to the sample
of at least `min_closeness`; otherwise `edit` returns None, never a wrong answer.
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from instructjax.labelers import edits
from instructjax.tasks.constraints import TITLE_PATTERN, Constraint, sentence_spans, split_words, word_pattern
from instructjax.tasks.instructions import TaskPrompt
from instructjax.tasks import constraints as C

MIN_CLOSENESS = 0.5  # an edit keeps at least half of the shorter text's words, in order
CLEAN_CUT_SHARE = 0.5  # a sentence (else clause) end is cut at if it keeps this share of the longest cut's words
MIN_ANSWER_WORDS = 4  # a cut keeping fewer words (a bare "Sure!") gives way to a run of later sentences
_LIMITS = (C.MAX_WORDS, C.MAX_SENTENCES)
_GROWTH = (C.MIN_WORDS, C.MIN_SENTENCES, C.BULLETS, C.PARAGRAPHS)  # met by adding sentences
_STRUCTURE = (C.BULLETS, C.PARAGRAPHS)
# Sentences about a topic, added where words or sentences are missing: declarative (they also read as
# a clause after "and"), no commas, none of the avoid_words choices, at most 6 words besides the topic
# (so one fits between min_words and max_words, which compatible constraints keep 10 words apart).
TOPIC_SENTENCES = (
    "there is more to learn about {topic}",
    "{topic} is worth a closer look",
    "learning about {topic} pays off",
    "reading about {topic} is a good start",
    "it helps to ask questions about {topic}",
    "a good book can explain {topic} well",
    "{topic} can surprise you",
)
_HOW_MANY = {1: "a word", 2: "two words", 3: "three words"}


def closeness(original: str, edited: str) -> float:
    """How much of `original` an edit keeps: the share of the shorter text's words (compared
    case-insensitively) that both texts have in the same order (difflib's matching blocks).
    1.0 when the edit only added words or only cut some; near 0 for a rewrite; 0 without words."""
    a, b = ([w.lower() for w in split_words(t)] for t in (original, edited))
    if not a or not b:
        return 0.0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / min(len(a), len(b))


class ConstraintDemonstrator:
    """Writes the demonstration of a task prompt by editing a sample (see the module docstring).

        demonstrator = ij.labelers.ConstraintDemonstrator()
        answer = demonstrator.edit(task_prompt, sample, finished=ended_with_eos)   # None: count it
    """

    def __init__(self, min_closeness: float = MIN_CLOSENESS):
        if not 0.0 <= min_closeness <= 1.0:
            raise ValueError(f"ConstraintDemonstrator: min_closeness must be in [0, 1], got {min_closeness}")
        self.min_closeness = min_closeness

    def edit(self, prompt: TaskPrompt, response: str, finished: bool = True) -> str | None:
        """`response` edited until it meets every constraint of `prompt`; None when no edit keeping
        `closeness` >= `min_closeness` does. `finished=False`: the sample hit the token budget."""
        drafts = [response]
        if not finished:
            kept = edits.cut_unfinished(response)
            drafts = [kept] if kept == response.strip() else [kept, edits.close_sentence(response)]
        editor = _Editor(prompt, lambda answer: closeness(response, answer) >= self.min_closeness)
        for draft in drafts:
            edited = editor.edit(draft) if split_words(draft) else None
            if edited is not None:
                return edited
        return None


class _Editor:
    """The edits for one prompt's constraints, in the order of the module docstring; `accept` is
    the demonstrator's own test of a finished answer (its closeness to the sample)."""

    def __init__(self, prompt: TaskPrompt, accept: Callable[[str], bool]):
        self.prompt, self.accept = prompt, accept
        self.constraints = {c.family: c for c in prompt.constraints}
        self.limits = self._of(_LIMITS)
        self.growth = self._of(_GROWTH)
        self.structure = self._of(_STRUCTURE)
        self.phrase = self._arg(C.END_PHRASE, "phrase")

    def _of(self, families: tuple[str, ...]) -> tuple[Constraint, ...]:
        return tuple(c for c in self.prompt.constraints if c.family in families)

    def _arg(self, family: str, key: str) -> Any:
        return self.constraints[family].arg(key) if family in self.constraints else None

    def _passes(self, text: str, constraints: tuple[Constraint, ...]) -> bool:
        return all(c.check(text) for c in constraints)

    def _clean(self, text: str) -> str:
        """Step 3 on any text: the forbidden words and the commas removed."""
        if C.AVOID_WORDS in self.constraints:
            text = edits.remove_words(text, self.constraints[C.AVOID_WORDS].arg("words"))
        if C.NO_COMMAS in self.constraints:
            text = edits.remove_commas(text)
        return text

    def edit(self, text: str) -> str | None:
        """The answer edited from `text`, or None."""
        text = text.strip()
        if self._passes(text, self.prompt.constraints) and self.accept(text):
            return text
        body, title = self._prepare(text)
        done = self._complete(body, title, rest=[])
        if done is not None or not self.limits:
            return done
        return self._cut(body, title)

    def _prepare(self, text: str) -> tuple[str, str | None]:
        """Steps 2 and 3: the body without the end phrase and title, cleaned; the title to put on top."""
        if self.phrase:
            at = text.lower().rfind(self.phrase.lower())
            if at >= 0:
                text = text[:at].rstrip()
        title = None
        if C.TITLE in self.constraints:
            found = TITLE_PATTERN.search(text)
            if found:
                title = found.group()
                text = (text[:found.start()].rstrip() + " " + text[found.end():].lstrip()).strip()
            else:
                title = f"<<{edits.title_case(self.prompt.topic)}>>"
            title = self._clean(title)
        return self._clean(text), title

    def _cut(self, body: str, title: str | None) -> str | None:
        """Step 4: the best clean cut of `body` whose completed answer is accepted."""
        best = {kind: self._longest_fit(candidates, body, title)
                for kind, candidates in edits.cut_candidates(body).items()}
        ranked = [best[kind] for kind in ("sentence", "clause", "word") if best[kind]]
        longest = max((words for words, _ in ranked), default=0)
        words, done = next(((w, d) for w, d in ranked if w >= CLEAN_CUT_SHARE * longest), (0, None))
        if words < MIN_ANSWER_WORDS:  # a bare opening ("Sure!"): later sentences instead, if they fit
            window = self._longest_fit(edits.sentence_windows(body), body, title)
            if window and window[0] > words:
                return window[1]
        return done

    def _longest_fit(self, candidates: Iterable[tuple[str, int]], body: str, title: str | None
                     ) -> tuple[int, str] | None:
        """(words, answer) of the first cut of `candidates` (text, end in `body`) whose completion is
        accepted; the sentences of `body` after the cut may come back joined to it (`_complete`)."""
        for cut, end in candidates:
            if self._passes(cut, self.limits):  # over the limits by itself: no completion fits
                done = self._complete(cut, title, rest=[body[s:e] for s, e in sentence_spans(body) if s >= end])
                if done is not None:
                    return len(split_words(cut)), done
        return None

    def _complete(self, body: str, title: str | None, rest: list[str]) -> str | None:
        """Steps 5 to 7 on a (cut) body: the finished answer, or None if it is not accepted. Where
        words are missing, the sentences `rest` cut from the body come back first, joined to it."""
        text = body
        keywords = self._arg(C.INCLUDE_KEYWORDS, "words") or ()
        missing = [w for w in keywords if not word_pattern(w).search(self.layout(text, title))]
        if missing:
            how_many = _HOW_MANY.get(len(missing), f"{len(missing)} words")
            named = " and ".join(missing)
            text = self._add(text, title, f"In {how_many}: {named}.", f"(in {how_many}: {named})")
            if text is None:
                return None
        for sentence in rest:
            if self._passes(self.layout(text, title), self._of((C.MIN_WORDS,))):
                break
            text = self._fitting(title, [edits.join_sentence(text, sentence)]) or text
        for sentence, clause in self._topic_additions():
            if self._passes(self.layout(text, title), self.growth):
                break
            text = self._add(text, title, sentence, clause) or text
        answer = self.layout(text, title)
        return answer if self._passes(answer, self.prompt.constraints) and self.accept(answer) else None

    def _topic_additions(self) -> Iterator[tuple[str, str]]:
        """(sentence, clause) forms of the topic sentences, from a place that depends on the prompt."""
        start = zlib.crc32(self.prompt.prompt.encode())
        for i in range(len(TOPIC_SENTENCES)):
            clause = TOPIC_SENTENCES[(start + i) % len(TOPIC_SENTENCES)].format(topic=self.prompt.topic)
            yield clause[:1].upper() + clause[1:] + ".", "and " + clause

    def _add(self, text: str, title: str | None, sentence: str, clause: str) -> str | None:
        """`text` with `sentence` added, or else `clause` joined to its last sentence (both cleaned):
        the first that keeps the limits; None if neither does."""
        options = [edits.append_sentence(text, self._clean(sentence))]
        if split_words(text):
            options.append(edits.append_clause(text, self._clean(clause)))
        return self._fitting(title, options)

    def _fitting(self, title: str | None, options: list[str | None]) -> str | None:
        """The first of `options` whose answer keeps the limits."""
        return next((o for o in options if o is not None and self._passes(self.layout(o, title), self.limits)), None)

    def layout(self, body: str, title: str | None) -> str:
        """Steps 6 and 7: structure, title, end phrase, then JSON, case and quotes."""
        text = body
        if self.structure and not self._passes(text, self.structure):
            text = edits.reflow(text, self._arg(C.BULLETS, "n"), self._arg(C.PARAGRAPHS, "n"))
        if title:
            text = f"{title} {text}" if C.MAX_SENTENCES in self.constraints else f"{title}\n{text}"
        if self.phrase:
            text = edits.append_sentence(text, self.phrase)
        if C.JSON in self.constraints and not self.constraints[C.JSON].check(text):
            text = edits.wrap_json(text)
        if C.LOWERCASE in self.constraints:
            text = text.lower()
        if C.UPPERCASE in self.constraints:
            text = text.upper()
        if C.QUOTED in self.constraints and not self.constraints[C.QUOTED].check(text):
            text = edits.wrap_quotes(text)
        return text
