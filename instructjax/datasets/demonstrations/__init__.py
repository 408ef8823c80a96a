"""TFDS builder of demonstrations from JSONL files."""
