"""GGUF files (llama.cpp) of llama-architecture models -> (`ModelConfig`, params, tokenizer).

The `gguf` package parses the file and dequantizes tensors into HF's (out, in) layout; we
undo llama.cpp's RoPE permutation of the q and k rows and reuse the HF tensor mapping.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Optional, Union

import gguf
import numpy as np

from instructjax.checkpoints.hf import hf_tensors, params_from_hf_tensors
from instructjax.models import ModelConfig
from instructjax.tokenizers import Tokenizer

PathLike = Union[str, pathlib.Path]

SUPPORTED_ARCHITECTURES = ("llama",)
# GGUF tensor name -> HF name (layer tensors: blk.N.<gguf> -> model.layers.N.<hf>).
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
LAYER_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
GLOBAL_NAME = re.compile(r"^(\w+)\.(weight|bias)$")


def open_gguf(path: PathLike) -> gguf.GGUFReader:
    """Parse a GGUF file, checking the magic and that every tensor lies inside the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the parser fails on truncation with assorted numpy errors
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({size} bytes): {e}") from e
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{path}: truncated GGUF file: tensor {t.name} ends at byte "
                             f"{t.data_offset + t.n_bytes}, the file has {size}")
    return reader


def _metadata(reader: gguf.GGUFReader, path: pathlib.Path, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"{path}: missing GGUF metadata key {key!r}")
        return default
    value = field.contents()
    if isinstance(value, float):  # stored as float32: take the shortest decimal that round-trips
        value = float(str(np.float32(value)))
    return value


def _config(reader: gguf.GGUFReader, path: pathlib.Path) -> ModelConfig:
    tensors = {t.name: t for t in reader.tensors}
    arch = _metadata(reader, path, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported: expected one of "
                         f"{SUPPORTED_ARCHITECTURES}")

    def meta(key, default=None):
        return _metadata(reader, path, f"{arch}.{key}", default)

    scaling = meta("rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensors:
        raise ValueError(f"{path}: RoPE scaling ({scaling!r}, rope_freqs) in GGUF files is not supported")
    d, heads = meta("embedding_length"), meta("attention.head_count")
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: missing tensor token_embd.weight")
    return ModelConfig(
        arch="llama", vocab_size=int(tensors["token_embd.weight"].shape[-1]), d_model=d, num_layers=meta("block_count"),
        num_heads=heads, num_kv_heads=meta("attention.head_count_kv", heads),
        head_dim=meta("rope.dimension_count", d // heads), ffn_dim=meta("feed_forward_length"),
        norm="rms", norm_eps=meta("attention.layer_norm_rms_epsilon"), activation="silu", position="rope",
        rope_theta=meta("rope.freq_base", 10000.0), tie_embeddings="output.weight" not in tensors,
        max_len=meta("context_length"))


def _hf_name(name: str) -> str:
    """GGUF tensor name -> HF name; unknown names are returned unchanged (and reported as unexpected)."""
    if m := LAYER_NAME.match(name):
        layer, base, kind = m.groups()
        return f"model.layers.{layer}.{LAYER_NAMES[base]}.{kind}" if base in LAYER_NAMES else name
    if (m := GLOBAL_NAME.match(name)) and m.group(1) in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    return name


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of q/k rows (its RoPE pairs adjacent dims, HF rotates halves)."""
    d = w.shape[-1]
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, d).swapaxes(1, 2).reshape(-1, d)


def load_gguf_weights(path: PathLike, reader: Optional[gguf.GGUFReader] = None) -> tuple[ModelConfig, dict]:
    """(cfg, float32 numpy params) of a llama-architecture GGUF file (dequantized); `reader`: `open_gguf(path)`."""
    path = pathlib.Path(path)
    reader = reader or open_gguf(path)
    by_hf_name = {_hf_name(t.name): t for t in reader.tensors}
    cfg = _config(reader, path)
    permuted_heads = {"self_attn.q_proj.weight": cfg.num_heads, "self_attn.k_proj.weight": cfg.num_kv_heads}

    def read(name: str, shape: tuple) -> np.ndarray:
        t = by_hf_name[name]
        got = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
        if got != shape:
            raise ValueError(f"{path}: tensor {t.name} ({name}) has shape {list(got)}, expected {list(shape)} "
                             "from the file's metadata")
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        except NotImplementedError as e:
            raise ValueError(f"{path}: tensor {t.name}: {e}") from e
        heads = permuted_heads.get(name.split(".", 3)[-1]) if name.startswith("model.layers.") else None
        return unpermute_rope_rows(w, heads) if heads else w

    params = params_from_hf_tensors(hf_tensors(cfg), set(by_hf_name), read, str(path))
    return cfg, params


def load_gguf(path: PathLike) -> tuple[ModelConfig, dict, Tokenizer]:
    """(cfg, float32 numpy params, tokenizer) of a llama-architecture GGUF file."""
    reader = open_gguf(path)
    cfg, params = load_gguf_weights(path, reader)
    return cfg, params, Tokenizer.from_gguf(path, reader=reader)
