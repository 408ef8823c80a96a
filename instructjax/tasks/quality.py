"""A crude quality score of a response, the tie-breaker of the constraint labeler.

quality = mean of three terms in [0, 1] (0 for a response without words):
- on topic: the fraction of the topic's content words found in the response (words compared by
  their first four letters, so "growing tomatoes" matches "grow a tomato");
- not repetitive: distinct word trigrams / all word trigrams (1 below three words);
- long enough: words / 10, capped at 1.
"""

from __future__ import annotations

from instructjax.tasks.constraints import split_words
from instructjax.tasks.instructions import TaskPrompt

_STEM = 4
_ENOUGH_WORDS = 10
_STOP_WORDS = frozenset("""a an the of to in on at for from by with and or but is are was were be been it its
this that these those how what why who about into over your you my our their his her as than then new""".split())


def _words(text: str) -> list[str]:
    return [w.lower() for w in split_words(text)]


def quality(prompt: TaskPrompt, response: str) -> float:
    """The quality of `response` to `prompt`, in [0, 1]; see the module docstring."""
    words = _words(response)
    if not words:
        return 0.0
    topic = {w[:_STEM] for w in _words(prompt.topic) if w not in _STOP_WORDS}
    on_topic = len(topic & {w[:_STEM] for w in words}) / len(topic) if topic else 1.0
    trigrams = list(zip(words, words[1:], words[2:]))
    varied = len(set(trigrams)) / len(trigrams) if trigrams else 1.0
    long_enough = min(1.0, len(words) / _ENOUGH_WORDS)
    return (on_topic + varied + long_enough) / 3
