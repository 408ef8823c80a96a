"""TFDS builder of comparisons from JSONL files."""
