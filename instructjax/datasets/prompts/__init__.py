"""TFDS builder of prompts from JSONL files."""
