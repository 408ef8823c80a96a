"""Tiny models and tokenizers for tests and notebooks."""

from instructjax.tokenizers import tiny_tokenizer  # lives in the foundation: `init.tokenizer = "tiny"` uses it

__all__ = ["tiny_tokenizer"]
