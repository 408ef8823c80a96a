"""Hugging Face checkpoints: `config.json` + safetensors <-> (`ModelConfig`, params).

Covers Llama, Mistral, Qwen2 and GPT-2 causal LMs and their `*ForSequenceClassification`
variants with one label (reward models, our `head="scalar"`). Tensors are read as numpy arrays
through `safetensors.numpy`: neither torch nor transformers is needed, nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import pathlib
import re
import stat
import warnings
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from instructjax.models import ModelConfig
from instructjax.models.config import RopeScaling
from instructjax.models.functional import stack_layers, unstack_layers

PathLike = Union[str, pathlib.Path]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# transformers' sequence classifiers have no score bias: a non-zero one of an RMS-norm model is
# kept here so that `load_hf` restores it (transformers' scores are then shifted by -bias).
SCORE_BIAS_KEY = "instructjax_score_bias"
# Non-parameter buffers that older checkpoints carry (causal masks, RoPE frequencies).
IGNORED_TENSORS = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")

HF_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "gpt2": "GPT2"}


def hf_class_name(arch: str, head: str) -> str:
    """The transformers class that holds `arch` with an LM (`head="lm"`) or scalar head."""
    if head == "scalar":
        return f"{HF_NAMES[arch]}ForSequenceClassification"
    return "GPT2LMHeadModel" if arch == "gpt2" else f"{HF_NAMES[arch]}ForCausalLM"


HF_CLASSES = {hf_class_name(a, h): (a, h) for a in HF_NAMES for h in ("lm", "scalar")}


# ---------------------------------------------------------------------------------------------
# config.json -> ModelConfig


class _ConfigReader:
    """Reads keys of a config.json, naming the file and key in every error."""

    def __init__(self, d: dict, file: pathlib.Path):
        self.d, self.file = d, file

    def required(self, key: str) -> Any:
        if self.d.get(key) is None:
            raise ValueError(f"{self.file}: missing key {key!r}")
        return self.d[key]

    def optional(self, key: str, default: Any) -> Any:
        value = self.d.get(key)
        return default if value is None else value

    def fail(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.file}: {key}={self.d.get(key)!r}: {problem}")


def _architecture(r: _ConfigReader) -> tuple[str, str]:
    names = r.optional("architectures", None)
    if names is None:  # a bare config: model_type decides, LM head
        model_type = r.required("model_type")
        if model_type not in HF_NAMES:
            raise r.fail("model_type", f"unknown architecture: expected one of {sorted(HF_NAMES)}")
        return model_type, "lm"
    if len(names) != 1 or names[0] not in HF_CLASSES:
        raise r.fail("architectures", f"unknown architecture: expected one of {sorted(HF_CLASSES)}")
    arch, head = HF_CLASSES[names[0]]
    if head == "scalar":
        num_labels = len(r.d["id2label"]) if r.d.get("id2label") else r.optional("num_labels", 2)
        if num_labels != 1:
            raise ValueError(f"{r.file}: {names[0]} with {num_labels} labels: only num_labels=1 "
                             "(a scalar reward) is supported")
    return arch, head


def _rope(r: _ConfigReader) -> tuple[float, Optional[RopeScaling]]:
    """RoPE theta and scaling from transformers-4 (`rope_theta`, `rope_scaling`) or -5 (`rope_parameters`) keys."""
    rope = dict(r.optional("rope_scaling", {}))
    rope.update(r.optional("rope_parameters", {}))
    theta = float(rope.get("rope_theta", r.optional("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"{r.file}: rope type {kind!r} is not supported: expected 'default' or 'llama3'")
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
               if k not in rope]
    if missing:
        raise ValueError(f"{r.file}: llama3 rope scaling lacks {missing}")
    return theta, RopeScaling(float(rope["factor"]), float(rope["low_freq_factor"]),
                              float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))


def _sliding_window(r: _ConfigReader, arch: str, num_layers: int) -> Optional[int]:
    if arch == "mistral":
        return r.optional("sliding_window", None)
    if arch != "qwen2":
        return None
    layer_types = r.optional("layer_types", None)
    if layer_types is None:  # transformers 4: layers >= max_window_layers slide when enabled
        if not r.optional("use_sliding_window", False):
            return None
        first = r.optional("max_window_layers", 0)
        layer_types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    if set(layer_types) == {"full_attention"}:
        return None
    if set(layer_types) == {"sliding_attention"}:
        return int(r.required("sliding_window"))
    raise r.fail("layer_types", "a mix of sliding and full attention layers is not supported")


def _llama_family_config(r: _ConfigReader, arch: str) -> ModelConfig:
    if r.optional("hidden_act", "silu") != "silu":
        raise r.fail("hidden_act", "only 'silu' is supported")
    if arch == "qwen2":
        qkv_bias, out_bias = True, False
    elif arch == "llama":
        qkv_bias, out_bias = r.optional("attention_bias", False), r.optional("mlp_bias", False)
        if qkv_bias != out_bias:
            raise r.fail("mlp_bias", f"attention_bias={qkv_bias} with mlp_bias={out_bias} is not supported")
    else:
        qkv_bias = out_bias = False
    d, heads = r.required("hidden_size"), r.required("num_attention_heads")
    num_layers = r.required("num_hidden_layers")
    theta, scaling = _rope(r)
    return ModelConfig(
        arch=arch, vocab_size=r.required("vocab_size"), d_model=d, num_layers=num_layers, num_heads=heads,
        num_kv_heads=r.optional("num_key_value_heads", heads), head_dim=r.optional("head_dim", d // heads),
        ffn_dim=r.required("intermediate_size"), norm="rms", norm_eps=float(r.optional("rms_norm_eps", 1e-6)),
        activation="silu", position="rope", rope_theta=theta, rope_scaling=scaling, qkv_bias=qkv_bias,
        out_bias=out_bias, tie_embeddings=r.optional("tie_word_embeddings", False),
        sliding_window=_sliding_window(r, arch, num_layers),
        max_len=r.optional("max_position_embeddings", 2048))


def _gpt2_config(r: _ConfigReader) -> ModelConfig:
    if r.optional("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise r.fail("activation_function", "only the tanh GELU ('gelu_new') is supported")
    if not r.optional("scale_attn_weights", True) or r.optional("scale_attn_by_inverse_layer_idx", False):
        raise ValueError(f"{r.file}: only the standard 1/sqrt(head_dim) attention scaling is supported")
    d, heads = r.required("n_embd"), r.required("n_head")
    return ModelConfig(
        arch="gpt2", vocab_size=r.required("vocab_size"), d_model=d, num_layers=r.required("n_layer"),
        num_heads=heads, num_kv_heads=heads, head_dim=d // heads, ffn_dim=r.optional("n_inner", 4 * d),
        norm="layer", norm_eps=float(r.optional("layer_norm_epsilon", 1e-5)), activation="gelu_tanh",
        position="learned", qkv_bias=True, out_bias=True, tie_embeddings=r.optional("tie_word_embeddings", True),
        max_len=r.required("n_positions"))


def config_from_hf(hf_config: dict, file: PathLike = CONFIG_FILE) -> tuple[ModelConfig, str]:
    """(ModelConfig, head) of a transformers config.json dict; `file` names it in errors."""
    r = _ConfigReader(hf_config, pathlib.Path(file))
    arch, head = _architecture(r)
    cfg = _gpt2_config(r) if arch == "gpt2" else _llama_family_config(r, arch)
    return cfg, head


# ---------------------------------------------------------------------------------------------
# ModelConfig -> config.json


def _check_exportable(cfg: ModelConfig) -> None:
    """Raise when `cfg` has a feature that the transformers class of `cfg.arch` cannot express."""
    if cfg.arch == "gpt2":
        wanted = dict(norm="layer", activation="gelu_tanh", position="learned", qkv_bias=True, out_bias=True,
                      num_kv_heads=cfg.num_heads, head_dim=cfg.d_model // cfg.num_heads, sliding_window=None)
    else:
        wanted = dict(norm="rms", activation="silu", position="rope")
        wanted.update({"llama": dict(out_bias=cfg.qkv_bias, sliding_window=None),
                       "qwen2": dict(qkv_bias=True, out_bias=False),
                       "mistral": dict(qkv_bias=False, out_bias=False)}[cfg.arch])
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            raise ValueError(f"save_hf: ModelConfig.{key}={getattr(cfg, key)!r} cannot be expressed in "
                             f"transformers' {HF_NAMES[cfg.arch]} models (expected {value!r})")


def _rope_keys(cfg: ModelConfig) -> dict:
    """RoPE keys in both the transformers-5 (`rope_parameters`) and -4 styles."""
    s = cfg.rope_scaling
    scaling = None if s is None else {
        "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_len}
    parameters = {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_theta}
    return {"rope_parameters": parameters, "rope_theta": cfg.rope_theta, "rope_scaling": scaling}


def classifier_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer`, or a copy whose pad token differs from EOS, for a `*ForSequenceClassification` export.

    transformers scores the rightmost token that is not `pad_token_id` (it ignores the attention
    mask), so with pad == EOS (SmolLM2) it would skip the EOS that we score. The copy pads with the
    unknown, BOS or another special token instead; its files and config.json say so.
    """
    eos = tokenizer.eos_id
    if eos is None or (tokenizer.pad_token is not None and tokenizer.pad_id != eos):
        return tokenizer
    candidates = [tokenizer.unk_token, tokenizer.bos_token]
    candidates += [tokenizer.id_to_token(i) for i in sorted(tokenizer.special_ids)]
    for token in candidates:
        if token is not None and tokenizer.token_to_id(token) not in (None, eos):
            out = copy.copy(tokenizer)
            out.pad_token = token
            return out
    raise ValueError(f"save_hf: {tokenizer!r} has no token other than EOS to pad with: transformers' sequence "
                     "classifiers find the scored token by skipping pad_token_id, which must differ from EOS")


def config_to_hf(cfg: ModelConfig, head: str = "lm", tokenizer: Any = None) -> dict:
    """A transformers config.json dict for `cfg` (pad/bos/eos ids from `tokenizer` when given)."""
    _check_exportable(cfg)
    out: dict[str, Any] = {"architectures": [hf_class_name(cfg.arch, head)], "model_type": cfg.arch,
                           "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
                           "torch_dtype": cfg.param_dtype}
    if cfg.arch == "gpt2":
        out.update(n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.ffn_dim,
                   n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
                   resid_pdrop=cfg.dropout_rate, embd_pdrop=cfg.dropout_rate, attn_pdrop=cfg.attention_dropout,
                   scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False)
    else:
        out.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                   num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, intermediate_size=cfg.ffn_dim,
                   hidden_act="silu", rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_len,
                   attention_dropout=cfg.attention_dropout, **_rope_keys(cfg))
        if cfg.arch == "llama":
            out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.out_bias)
        elif cfg.arch == "mistral":
            out.update(sliding_window=cfg.sliding_window)
        else:  # qwen2: every layer slides or none does
            sliding = cfg.sliding_window is not None
            out.update(use_sliding_window=sliding, sliding_window=cfg.sliding_window, max_window_layers=0,
                       layer_types=[("sliding_attention" if sliding else "full_attention")] * cfg.num_layers)
    if head == "scalar":
        out.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    # Unknown without a tokenizer: null rather than transformers' per-class defaults (e.g. GPT-2's 50256).
    if head == "scalar" and tokenizer is not None:
        tokenizer = classifier_tokenizer(tokenizer)
    ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) if tokenizer is not None else (None,) * 3
    out.update(zip(("pad_token_id", "bos_token_id", "eos_token_id"), ids))
    return out


# ---------------------------------------------------------------------------------------------
# tensor layout: one HF tensor <-> one or more of our parameters


@dataclasses.dataclass(frozen=True)
class HFTensor:
    """One HF tensor: name, shape, the param paths it fills and the conversions both ways."""

    name: str
    shape: tuple[int, ...]
    paths: tuple[tuple[str, ...], ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_hf: Callable[..., np.ndarray]


def _same(name, shape, path) -> HFTensor:
    return HFTensor(name, shape, (path,), lambda w: (w,), lambda w: w)


def _transposed(name, shape, path) -> HFTensor:
    """torch Linear weight [out, in] <-> flax kernel [in, out]."""
    return HFTensor(name, shape, (path,), lambda w: (w.T,), lambda k: k.T)


def _reshaped(name, shape, path, ours_shape) -> HFTensor:
    return HFTensor(name, shape, (path,), lambda w: (w.reshape(ours_shape),), lambda k: k.reshape(shape))


def _heads_in(name, path, d, heads, dh) -> HFTensor:
    """q/k/v Linear [heads*dh, d] <-> kernel [d, heads, dh]."""
    return HFTensor(name, (heads * dh, d), (path,), lambda w: (w.T.reshape(d, heads, dh),),
                    lambda k: k.reshape(d, heads * dh).T)


def _heads_out(name, path, d, heads, dh) -> HFTensor:
    """o Linear [d, heads*dh] <-> kernel [heads, dh, d]."""
    return HFTensor(name, (d, heads * dh), (path,), lambda w: (w.T.reshape(heads, dh, d),),
                    lambda k: k.reshape(heads * dh, d).T)


def _llama_tensors(cfg: ModelConfig, head: str, prefix: str = "model.") -> list[HFTensor]:
    d, dh, f = cfg.d_model, cfg.head_dim, cfg.ffn_dim
    out = [_same(f"{prefix}embed_tokens.weight", (cfg.vocab_size, d), ("embed", "embedding"))]
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}layers.{i}.", f"layers_{i}"
        out += [_same(hf + "input_layernorm.weight", (d,), (ours, "attn_norm", "scale")),
                _same(hf + "post_attention_layernorm.weight", (d,), (ours, "mlp_norm", "scale"))]
        for name, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", cfg.num_kv_heads)):
            out.append(_heads_in(f"{hf}self_attn.{name}_proj.weight", (ours, "attn", name, "kernel"), d, heads, dh))
            if cfg.qkv_bias:
                out.append(_reshaped(f"{hf}self_attn.{name}_proj.bias", (heads * dh,), (ours, "attn", name, "bias"),
                                     (heads, dh)))
        out.append(_heads_out(hf + "self_attn.o_proj.weight", (ours, "attn", "o", "kernel"), d, cfg.num_heads, dh))
        mlp = [("gate", (f, d)), ("up", (f, d)), ("down", (d, f))]
        out += [_transposed(f"{hf}mlp.{n}_proj.weight", shape, (ours, "mlp", n, "kernel")) for n, shape in mlp]
        if cfg.out_bias:
            out.append(_same(hf + "self_attn.o_proj.bias", (d,), (ours, "attn", "o", "bias")))
            out += [_same(f"{hf}mlp.{n}_proj.bias", shape[:1], (ours, "mlp", n, "bias")) for n, shape in mlp]
    out.append(_same(f"{prefix}norm.weight", (d,), ("final_norm", "scale")))
    return out + _head_tensors(cfg, head)


def _head_tensors(cfg: ModelConfig, head: str) -> list[HFTensor]:
    if head == "scalar":
        return [_transposed("score.weight", (1, cfg.d_model), ("score_head", "kernel"))]
    if cfg.tie_embeddings:
        return []
    return [_transposed("lm_head.weight", (cfg.vocab_size, cfg.d_model), ("lm_head",))]


def _gpt2_qkv(name, layer: str, d, heads, dh, bias: bool) -> HFTensor:
    """Fused Conv1D c_attn [d, 3d] (or bias [3d]) <-> q, k, v kernels [d, heads, dh] (biases [heads, dh])."""
    ours_shape = (heads, dh) if bias else (d, heads, dh)
    paths = tuple((layer, "attn", p, "bias" if bias else "kernel") for p in ("q", "k", "v"))
    return HFTensor(name, (3 * d,) if bias else (d, 3 * d), paths,
                    lambda w: tuple(x.reshape(ours_shape) for x in np.split(w, 3, axis=-1)),
                    lambda *xs: np.concatenate([x.reshape(ours_shape[:-2] + (d,)) for x in xs], axis=-1))


def _gpt2_tensors(cfg: ModelConfig, head: str, prefix: str = "transformer.") -> list[HFTensor]:
    d, h, dh, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.ffn_dim
    out = [_same(f"{prefix}wte.weight", (cfg.vocab_size, d), ("embed", "embedding")),
           _same(f"{prefix}wpe.weight", (cfg.max_len, d), ("pos_embed", "embedding"))]
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}h.{i}.", f"layers_{i}"
        out += [
            _same(hf + "ln_1.weight", (d,), (ours, "attn_norm", "scale")),
            _same(hf + "ln_1.bias", (d,), (ours, "attn_norm", "bias")),
            _gpt2_qkv(hf + "attn.c_attn.weight", ours, d, h, dh, bias=False),
            _gpt2_qkv(hf + "attn.c_attn.bias", ours, d, h, dh, bias=True),
            _reshaped(hf + "attn.c_proj.weight", (d, d), (ours, "attn", "o", "kernel"), (h, dh, d)),
            _same(hf + "attn.c_proj.bias", (d,), (ours, "attn", "o", "bias")),
            _same(hf + "ln_2.weight", (d,), (ours, "mlp_norm", "scale")),
            _same(hf + "ln_2.bias", (d,), (ours, "mlp_norm", "bias")),
            _same(hf + "mlp.c_fc.weight", (d, f), (ours, "mlp", "up", "kernel")),
            _same(hf + "mlp.c_fc.bias", (f,), (ours, "mlp", "up", "bias")),
            _same(hf + "mlp.c_proj.weight", (f, d), (ours, "mlp", "down", "kernel")),
            _same(hf + "mlp.c_proj.bias", (d,), (ours, "mlp", "down", "bias")),
        ]
    out += [_same(f"{prefix}ln_f.weight", (d,), ("final_norm", "scale")),
            _same(f"{prefix}ln_f.bias", (d,), ("final_norm", "bias"))]
    return out + _head_tensors(cfg, head)


def hf_tensors(cfg: ModelConfig, head: str = "lm", *, prefix: Optional[str] = None) -> list[HFTensor]:
    """Every tensor of the transformers checkpoint of `cfg` (`prefix`: the base model's, default HF's)."""
    if cfg.arch == "gpt2":
        return _gpt2_tensors(cfg, head, "transformer." if prefix is None else prefix)
    return _llama_tensors(cfg, head, "model." if prefix is None else prefix)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def params_from_hf_tensors(specs: list[HFTensor], names: set[str], read: Callable[[str, tuple], np.ndarray],
                           where: str, dtype=np.float32) -> dict:
    """Our param tree from HF tensors `names`; `read(name, expected_shape)` checks the shape and loads one.

    Missing and unexpected tensors, and tensors with NaN or inf values, are errors naming `where`.
    """
    expected = {s.name for s in specs}
    missing = sorted(expected - names)
    if missing:
        raise ValueError(f"{where}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         f"({len(missing)} of {len(expected)})")
    extra = sorted(n for n in names - expected if not IGNORED_TENSORS.search(n))
    if extra:
        raise ValueError(f"{where}: unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''} "
                         f"({len(extra)}) that the config does not use")
    params: dict = {}
    for spec in specs:
        tensor = read(spec.name, spec.shape)
        if not np.isfinite(tensor).all():
            raise ValueError(f"{where}: tensor {spec.name} has {np.size(tensor) - np.isfinite(tensor).sum()} "
                             "non-finite values (NaN or inf)")
        arrays = spec.to_ours(tensor)
        for path, array in zip(spec.paths, arrays, strict=True):
            _set(params, path, np.ascontiguousarray(array, dtype=dtype))
    return params


# ---------------------------------------------------------------------------------------------
# load_hf


def _read_config(path: pathlib.Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: missing (a Hugging Face checkpoint directory needs config.json)")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON: {e}") from e


def _weight_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The safetensors files of a checkpoint: one file, or the shards of an index."""
    if (path / WEIGHTS_FILE).is_file():
        return [path / WEIGHTS_FILE]
    index = path / INDEX_FILE
    if not index.is_file():
        others = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        hint = f" (found {others}: only safetensors are read, pickles never are)" if others else ""
        raise FileNotFoundError(f"{path}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from e
    files = [path / name for name in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing shard listed in {index}")
    return files


def _open_safetensors(stack: contextlib.ExitStack, file: pathlib.Path):
    try:
        return stack.enter_context(safetensors.safe_open(file, framework="numpy"))
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def _base_prefix(arch: str, names: set[str]) -> str:
    """The base model's name prefix: HF's own, or none (e.g. the hub's `gpt2` saved from GPT2Model)."""
    if arch == "gpt2":
        return "" if "wte.weight" in names else "transformer."
    return "" if "embed_tokens.weight" in names else "model."


def _check_tied_head(names: set, cfg: ModelConfig, read: Callable, embedding_name: str, where: str) -> set:
    """A tied checkpoint may still store lm_head.weight: accept it only when it equals the embedding."""
    if not (cfg.tie_embeddings and "lm_head.weight" in names):
        return names
    shape = (cfg.vocab_size, cfg.d_model)
    if not np.array_equal(read("lm_head.weight", shape), read(embedding_name, shape)):
        raise ValueError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from {embedding_name}")
    return names - {"lm_head.weight"}


def load_hf(path: PathLike, *, dtype: Optional[str] = None, scan_layers: bool = False) -> tuple[ModelConfig, dict]:
    """Load a transformers checkpoint directory (config.json + safetensors) as (cfg, numpy params).

    `dtype` (e.g. "bfloat16") sets the parameter and compute dtypes (default float32);
    `scan_layers=True` returns the stacked-layers layout. A `*ForSequenceClassification`
    checkpoint gives the params of `Transformer(cfg, head="scalar")`.
    """
    path = pathlib.Path(path)
    hf_config = _read_config(path)
    cfg, head = config_from_hf(hf_config, path / CONFIG_FILE)
    dtype = jnp.dtype(dtype or "float32")
    cfg = cfg.replace(dtype=dtype.name, param_dtype=dtype.name)
    with contextlib.ExitStack() as stack:
        owner = {}
        for file in _weight_files(path):
            handle = _open_safetensors(stack, file)
            for name in handle.keys():
                if name in owner:
                    raise ValueError(f"{file}: tensor {name} is also in {owner[name][0]}")
                owner[name] = (file, handle)

        def read(name: str, shape: tuple) -> np.ndarray:
            file, handle = owner[name]
            got = tuple(handle.get_slice(name).get_shape())
            if got != shape:
                raise ValueError(f"{file}: tensor {name} has shape {list(got)}, expected {list(shape)} "
                                 f"(from {path / CONFIG_FILE})")
            try:
                return handle.get_tensor(name)
            except (safetensors.SafetensorError, TypeError) as e:
                raise ValueError(f"{file}: cannot read tensor {name}: {e}") from e

        names = set(owner)
        prefix = _base_prefix(cfg.arch, names)
        specs = hf_tensors(cfg, head, prefix=prefix)
        names = _check_tied_head(names, cfg, read, specs[0].name, str(path))
        params = params_from_hf_tensors(specs, names, read, str(path), dtype)
    if head == "scalar":
        params["score_head"]["bias"] = np.full((1,), hf_config.get(SCORE_BIAS_KEY, 0.0), dtype)
    if scan_layers:
        params, cfg = stack_layers(params), cfg.replace(scan_layers=True)
    return cfg, params


# ---------------------------------------------------------------------------------------------
# save_hf


def _score_bias(cfg: ModelConfig, params: dict) -> tuple[dict, float]:
    """Fold a non-zero score bias into the final LayerNorm (exact), or return it for config.json (RMS norm)."""
    bias = float(np.asarray(params["score_head"]["bias"], np.float64).reshape(()))
    if bias == 0.0:
        return params, 0.0
    if cfg.norm == "layer":
        w = np.asarray(params["score_head"]["kernel"], np.float64)[:, 0]
        final_norm = dict(params["final_norm"])
        final_norm["bias"] = np.asarray(final_norm["bias"], np.float64) + bias * w / np.dot(w, w)
        return {**params, "final_norm": final_norm}, 0.0
    warnings.warn(f"save_hf: transformers' {hf_class_name(cfg.arch, 'scalar')} has no score bias; its scores "
                  f"will be lower by the bias {bias:g} (kept as {SCORE_BIAS_KEY} in config.json for load_hf)",
                  stacklevel=3)
    return params, bias


def _leaf_paths(tree: dict, prefix: tuple = ()) -> set[tuple[str, ...]]:
    out = set()
    for key, value in tree.items():
        out |= _leaf_paths(value, prefix + (key,)) if isinstance(value, dict) else {prefix + (key,)}
    return out


def save_hf(path: PathLike, cfg: ModelConfig, params: dict, tokenizer: Any = None) -> None:
    """Write `params` as a transformers checkpoint: config.json + model.safetensors (+ the tokenizer's files).

    Params with a "score_head" are saved as `*ForSequenceClassification` with one label. Stacked
    (scan_layers) params are unstacked. Tensors keep `cfg.param_dtype`.
    """
    path = pathlib.Path(path)
    params = jax.device_get(params)
    if "layers" in params:
        params = unstack_layers(params)
    head = "scalar" if "score_head" in params else "lm"
    hf_config = config_to_hf(cfg, head, tokenizer)
    if head == "scalar":
        params, bias = _score_bias(cfg, params)
        if bias:
            hf_config[SCORE_BIAS_KEY] = bias
    specs = hf_tensors(cfg, head)
    used = {p for s in specs for p in s.paths} | ({("score_head", "bias")} if head == "scalar" else set())
    unused = sorted("/".join(p) for p in _leaf_paths(params) - used)
    if unused:
        raise ValueError(f"save_hf: params {unused[:5]} have no place in a {hf_config['architectures'][0]} "
                         "checkpoint of this config")
    dtype = jnp.dtype(cfg.param_dtype)
    tensors = {}
    for spec in specs:
        try:
            arrays = [np.asarray(_get(params, p)) for p in spec.paths]
        except KeyError as e:
            raise ValueError(f"save_hf: params lack {'/'.join(spec.paths[0])} needed for {spec.name}") from e
        tensor = spec.to_hf(*arrays)
        if tensor.shape != spec.shape:
            raise ValueError(f"save_hf: {'/'.join(spec.paths[0])} gives {spec.name} of shape {list(tensor.shape)}, "
                             f"expected {list(spec.shape)} from the config")
        tensors[spec.name] = np.ascontiguousarray(tensor, dtype=dtype)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    safetensors.numpy.save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    # safetensors writes mode 0600 whatever the umask: give the weights config.json's mode
    (path / WEIGHTS_FILE).chmod(stat.S_IMODE((path / CONFIG_FILE).stat().st_mode))
    if tokenizer is not None:
        (classifier_tokenizer(tokenizer) if head == "scalar" else tokenizer).save_pretrained(path)
