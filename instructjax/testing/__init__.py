"""Tiny models and tokenizers for tests and notebooks."""

from instructjax.testing.tokenizer import tiny_tokenizer

__all__ = ["tiny_tokenizer"]
