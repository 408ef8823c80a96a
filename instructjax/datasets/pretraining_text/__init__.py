"""TFDS builder of pretraining text from JSONL files."""
