"""The default task of the pipeline: everyday requests with verifiable constraints (IFEval-style),
a quality score for the labeler, and an offline pretraining-text corpus.

    prompts = ij.tasks.make_prompts("train", 256, seed=0)
    ok = [c.check(response) for c in prompts[0].constraints]
    ij.tasks.constraint_fraction([prompts[0].prompt], [response])   # a PPO reward function
"""

from instructjax.tasks.constraints import (CONFLICTING_FAMILIES, FAMILIES, TITLE_PATTERN, Constraint, compatible,
                                           constraints_of_prompt, count_sentences, count_words, make_constraint,
                                           parse_constraint, sample_constraint, sentence_spans, split_words,
                                           word_pattern, word_spans)
from instructjax.tasks.corpus import stdlib_docstrings, write_pretraining_jsonl
from instructjax.tasks.instructions import (SPLITS, TaskPrompt, compose_prompt, make_prompts, read_records,
                                            write_records)
from instructjax.tasks.quality import quality
from instructjax.tasks.rewards import all_constraints, constraint_fraction
from instructjax.tasks.topics import REQUESTS, TOPICS, split_topics

__all__ = [
    "CONFLICTING_FAMILIES", "FAMILIES", "REQUESTS", "SPLITS", "TITLE_PATTERN", "TOPICS", "Constraint", "TaskPrompt",
    "all_constraints", "compatible", "compose_prompt", "constraint_fraction", "constraints_of_prompt",
    "count_sentences", "count_words", "make_constraint", "make_prompts", "parse_constraint", "quality",
    "read_records", "sample_constraint", "sentence_spans", "split_topics", "split_words", "stdlib_docstrings",
    "word_pattern", "word_spans", "write_pretraining_jsonl", "write_records",
]
