"""Logits parity with transformers (torch CPU, float32, eager attention) on the same weights."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from instructjax import checkpoints  # noqa: E402
from instructjax.models import Transformer  # noqa: E402
from instructjax.testing.hf_models import TINY_VARIANTS, hf_outputs, load_hf_model, save_tiny_hf_model  # noqa: E402

TOL = 1e-4
LENGTHS = (10, 7, 4)  # longer than mistral's sliding window of 4


def make_batch(lengths, padding: str, vocab: int, seed: int = 0):
    """Random tokens [B, T] and mask, padded on `padding` ("left" / "right"); pad slots hold id 0."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    tokens, mask = np.zeros((len(lengths), t), np.int32), np.zeros((len(lengths), t), bool)
    for i, n in enumerate(lengths):
        cols = slice(t - n, t) if padding == "left" else slice(0, n)
        tokens[i, cols], mask[i, cols] = rng.integers(1, vocab, n), True
    return tokens, mask


def ours(cfg, params, tokens, mask, head="lm"):
    return np.asarray(Transformer(cfg, head=head).apply({"params": params}, tokens, attention_mask=mask))


@pytest.fixture(scope="module", params=[(v, "lm") for v in TINY_VARIANTS] + [("llama", "scalar"), ("gpt2", "scalar")],
                ids=lambda p: "-".join(p))
def tiny(request, tmp_path_factory):
    """(head, transformers model, our cfg, our params) of one tiny random checkpoint."""
    variant, head = request.param
    path = save_tiny_hf_model(tmp_path_factory.mktemp(f"{variant}_{head}"), variant, head=head)
    cfg, params = checkpoints.load_hf(path)
    return head, load_hf_model(path, head), cfg, params


@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_outputs_match_transformers(tiny, padding):
    head, hf_model, cfg, params = tiny
    lengths = (max(LENGTHS),) * 3 if padding == "none" else LENGTHS
    tokens, mask = make_batch(lengths, padding, cfg.vocab_size)
    got, want = ours(cfg, params, tokens, mask, head), hf_outputs(hf_model, tokens, mask)
    diff = np.abs(got - want)[mask].max()
    print(f"max |ours - transformers| = {diff:.2e}")
    assert diff <= TOL
    for row, (toks, m) in enumerate(zip(tokens, mask)):  # the same tokens without any padding
        alone = hf_outputs(hf_model, toks[m][None])[0]
        assert np.abs(got[row][m] - alone).max() <= TOL


def test_scan_layers_gives_the_same_outputs(tiny, tmp_path):
    head, _, cfg, params = tiny
    tokens, mask = make_batch(LENGTHS, "left", cfg.vocab_size)
    path = tmp_path / "export"
    checkpoints.save_hf(path, cfg, params)
    scan_cfg, scan_params = checkpoints.load_hf(path, scan_layers=True)
    assert scan_cfg.scan_layers and "layers" in scan_params and "layers_0" not in scan_params
    got = ours(scan_cfg, scan_params, tokens, mask, head)
    np.testing.assert_allclose(got[mask], ours(cfg, params, tokens, mask, head)[mask], atol=1e-5)


@pytest.mark.parametrize("variant, change", [("mistral", {"sliding_window": None}), ("llama3", {"rope_scaling": None})])
def test_parity_tests_see_the_variant_feature(variant, change, tmp_path):
    """Dropping the window / the RoPE scaling breaks parity, so the tests above do check them."""
    path = save_tiny_hf_model(tmp_path, variant)
    cfg, params = checkpoints.load_hf(path)
    tokens, mask = make_batch(LENGTHS, "right", cfg.vocab_size)
    want = hf_outputs(load_hf_model(path), tokens, mask)
    assert np.abs(ours(cfg.replace(**change), params, tokens, mask) - want)[mask].max() > 0.1
