"""Import and export of model checkpoints: Hugging Face safetensors, GGUF, the embedded default model."""

from instructjax.checkpoints.default import default_model_path, load_default_model
from instructjax.checkpoints.gguf import load_gguf
from instructjax.checkpoints.hf import load_hf, save_hf

__all__ = ["load_hf", "save_hf", "load_gguf", "load_default_model", "default_model_path"]
