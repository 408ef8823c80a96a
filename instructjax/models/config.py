"""Model configuration: one frozen dataclass for every supported architecture."""

from __future__ import annotations

import dataclasses
from typing import Optional

from instructjax.models.lora import LoraConfig

ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling of RoPE (HF `rope_type: llama3`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a decoder-only transformer (hashable: usable as a jit static arg)."""

    arch: str = "llama"  # one of ARCHITECTURES; decides the HF export format
    vocab_size: int = 256  # rows of the token embedding
    d_model: int = 64  # residual stream width
    num_layers: int = 2  # transformer blocks
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention when < num_heads)
    head_dim: int = 16  # width of one attention head
    ffn_dim: int = 128  # hidden width of the MLP
    norm: str = "rms"  # "rms" (Llama) or "layer" (GPT-2)
    norm_eps: float = 1e-5  # epsilon inside the norm
    activation: str = "silu"  # "silu" (gated SwiGLU MLP) or "gelu_tanh" (plain GPT-2 MLP)
    position: str = "rope"  # "rope" or "learned"
    rope_theta: float = 10000.0  # RoPE base frequency
    rope_scaling: Optional[RopeScaling] = None  # Llama-3 style scaling, None for plain RoPE
    qkv_bias: bool = False  # bias on q, k, v projections (Qwen2, GPT-2)
    out_bias: bool = False  # bias on the attention output and MLP projections (GPT-2)
    tie_embeddings: bool = False  # LM head shares the token embedding
    sliding_window: Optional[int] = None  # Mistral-style attention window, None for full
    max_len: int = 2048  # longest sequence (size of learned positions, KV cache bound)
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    dropout_rate: float = 0.0  # residual dropout (off in every rollout/eval forward)
    attention_dropout: float = 0.0  # dropout on attention probabilities (attention_impl "einsum" only)
    attention_impl: str = "einsum"  # one of ATTENTION_IMPLS; "xla" / "cudnn" (bf16/f16): jax.nn.dot_product_attention
    remat_policy: str = "none"  # one of REMAT_POLICIES: rematerialisation of each block
    scan_layers: bool = False  # stack the blocks with nn.scan (params get a leading layer axis)
    frozen_layers: int = 0  # training: no gradient reaches the embeddings' lookup and the first N blocks
    initializer_range: float = 0.02  # std of the normal init of random weights
    lora: Optional[LoraConfig] = None  # LoRA adapters on the projections (instructjax.models.lora), None: off

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"ModelConfig.arch={self.arch!r}: expected one of {ARCHITECTURES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}")
        self._check_attention_impl()
        if not 0 <= self.frozen_layers <= self.num_layers:
            raise ValueError(f"ModelConfig.frozen_layers={self.frozen_layers}: expected 0..{self.num_layers}")
        if self.frozen_layers and self.scan_layers:
            raise ValueError("ModelConfig.frozen_layers needs scan_layers=False (the blocks are unrolled)")
        if self.lora is not None and self.arch == "gpt2":
            raise ValueError("lora.rank > 0 needs a Llama-family model (llama, mistral, qwen2), not gpt2 "
                             "(fused c_attn projection)")
        if self.lora is not None and self.scan_layers:
            raise ValueError("lora.rank > 0 needs model.scan_layers=False (adapters are per unrolled block)")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        for key, allowed in (("norm", ("rms", "layer")), ("activation", ("silu", "gelu_tanh")),
                             ("position", ("rope", "learned"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"ModelConfig.{key}={getattr(self, key)!r}: expected one of {allowed}")

    def _check_attention_impl(self):
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
        if self.attention_impl != "einsum" and self.attention_dropout:
            raise ValueError(f"ModelConfig.attention_dropout={self.attention_dropout} needs attention_impl='einsum' "
                             f"(got {self.attention_impl!r}): jax.nn.dot_product_attention has no dropout")
        if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            raise ValueError(f"ModelConfig.attention_impl='cudnn' needs dtype bfloat16 or float16, got {self.dtype!r}")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KeyError(f"unknown ModelConfig keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        if d.get("lora") is not None:
            d["lora"] = LoraConfig(**d["lora"])
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count, embeddings included."""
        d, f, h = self.d_model, self.ffn_dim, self.head_dim
        attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
        mlp = d * f * (3 if self.activation == "silu" else 2)
        norms = 2 * d * (2 if self.norm == "layer" else 1)
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        if self.position == "learned":
            emb += self.max_len * d
        return self.num_layers * (attn + mlp + norms) + emb + d


PRESETS = {
    "tiny": ModelConfig(vocab_size=320),  # fits the byte-level test tokenizer (256 bytes + specials)
    "smollm2_135m": ModelConfig(
        arch="llama", vocab_size=49152, d_model=576, num_layers=30, num_heads=9, num_kv_heads=3,
        head_dim=64, ffn_dim=1536, norm_eps=1e-5, rope_theta=100000.0, tie_embeddings=True,
        max_len=8192),
    "gpt2": ModelConfig(
        arch="gpt2", vocab_size=50257, d_model=768, num_layers=12, num_heads=12, num_kv_heads=12,
        head_dim=64, ffn_dim=3072, norm="layer", norm_eps=1e-5, activation="gelu_tanh",
        position="learned", qkv_bias=True, out_bias=True, tie_embeddings=True, max_len=1024),
    "llama3_2_1b": ModelConfig(
        arch="llama", vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
        head_dim=64, ffn_dim=8192, norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), tie_embeddings=True, max_len=131072),
    "llama3_8b": ModelConfig(  # Llama-3.1-8B's shape
        arch="llama", vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, ffn_dim=14336, norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), max_len=131072),
    "llama3_70b": ModelConfig(  # Llama-3.1-70B's shape
        arch="llama", vocab_size=128256, d_model=8192, num_layers=80, num_heads=64, num_kv_heads=8,
        head_dim=128, ffn_dim=28672, norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), max_len=131072),
    "qwen2_5_0_5b": ModelConfig(
        arch="qwen2", vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2,
        head_dim=64, ffn_dim=4864, norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=True,
        tie_embeddings=True, max_len=32768),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """A preset by name, with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}: expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
