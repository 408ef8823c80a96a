"""Tiny random `transformers` models (Llama, Mistral, Qwen2, GPT-2) for parity tests.

torch and transformers are test-only dependencies: they are imported inside the functions.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional, Union

import numpy as np

PathLike = Union[str, pathlib.Path]

TINY_VARIANTS = ("llama", "llama3", "mistral", "qwen2", "gpt2")
_LLAMA_SIZES = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)


def tiny_hf_config(variant: str = "llama", *, head: str = "lm", **overrides: Any):
    """A transformers config of a 2-layer model; `variant` in TINY_VARIANTS, `head` "lm" or "scalar".

    llama3: Llama-3 RoPE scaling whose wavelength bands all occur at head_dim 8; mistral: a
    sliding window of 4 and head_dim 16 != hidden/heads; qwen2: q/k/v biases, tied embeddings.
    """
    import transformers

    if variant == "gpt2":
        kwargs = dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                      eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        cls = transformers.GPT2Config
    else:
        kwargs = dict(_LLAMA_SIZES, rms_norm_eps=1e-5)
        cls = {"llama": transformers.LlamaConfig, "llama3": transformers.LlamaConfig,
               "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config}[variant]
        if variant == "llama3":
            kwargs["rope_scaling"] = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64)
        elif variant == "mistral":
            kwargs.update(sliding_window=4, head_dim=16)
        elif variant == "qwen2":
            kwargs.update(tie_word_embeddings=True)
    if head == "scalar":
        kwargs.update(num_labels=1, pad_token_id=0)
    kwargs.update(overrides)
    return cls(**kwargs)


def randomize_(model, seed: int = 0, std: float = 0.2) -> None:
    """Overwrite every parameter with noise (norm scales around 1) so that no mapping hides behind zeros or ones."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
            is_norm_scale = p.ndim == 1 and ("norm" in name or ".ln_" in name) and name.endswith("weight")
            p.copy_(noise * 0.5 + 1.0 if is_norm_scale else noise)


def save_tiny_hf_model(path: PathLike, variant: str = "llama", *, head: str = "lm", seed: int = 0,
                       max_shard_size: Optional[str] = None, **overrides: Any) -> pathlib.Path:
    """Create a tiny randomised transformers model and `save_pretrained` it (safetensors) into `path`."""
    import transformers

    config = tiny_hf_config(variant, head=head, **overrides)
    auto = transformers.AutoModelForSequenceClassification if head == "scalar" else transformers.AutoModelForCausalLM
    model = auto.from_config(config, attn_implementation="eager")
    randomize_(model, seed)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, **kwargs)
    return pathlib.Path(path)


def load_hf_model(path: PathLike, head: str = "lm"):
    """The transformers model saved in `path`: float32, eager attention, eval mode."""
    import torch
    import transformers

    auto = transformers.AutoModelForSequenceClassification if head == "scalar" else transformers.AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def hf_outputs(model, tokens: np.ndarray, attention_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """float32 logits [B, T, V] of a causal LM, or scores [B, T] at every position of a sequence classifier.

    Position ids are cumsum(mask) - 1 clipped at 0, as ours: transformers' forward otherwise
    numbers positions 0..T-1 whatever the padding.
    """
    import torch

    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    mask = torch.ones_like(tokens) if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        if hasattr(model, "score"):  # sequence classifier: score every position, not only the last
            hidden = model.base_model(input_ids=tokens, attention_mask=mask, position_ids=positions)[0]
            return model.score(hidden)[..., 0].float().numpy()
        return model(input_ids=tokens, attention_mask=mask, position_ids=positions).logits.float().numpy()
