"""LoRA export: the merged HF model and the PEFT adapter give the adapted model's logits in transformers."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from instructjax import checkpoints  # noqa: E402
from instructjax.checkpoints.peft import ADAPTER_CONFIG_FILE, save_peft_adapter  # noqa: E402
from instructjax.models import Transformer, get_preset, lora  # noqa: E402
from instructjax.models.functional import init_params  # noqa: E402
from instructjax.testing.hf_models import hf_outputs, load_hf_model  # noqa: E402
from instructjax.train.export import ADAPTER_DIR, export_model  # noqa: E402
from instructjax.train.initial_model import with_adapters  # noqa: E402

CFG = get_preset("tiny", num_heads=4, num_kv_heads=2)
TOKENS = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 10))


@pytest.fixture(scope="module")
def adapted():
    """(base params, LoRA cfg, params whose adapters all differ from zero) on q, v, o and the MLP."""
    params = init_params(CFG, jax.random.key(0))
    lora_cfg = lora.LoraConfig(rank=4, alpha=12.0, targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                            "down_proj"))
    cfg, trained = with_adapters(CFG, params, lora_cfg, jax.random.key(1))
    rng = np.random.default_rng(1)
    trained = jax.tree_util.tree_map_with_path(
        lambda path, x: rng.normal(0, 0.05, x.shape).astype(np.float32) if path[-1].key == "lora_b" else x, trained)
    ours = np.asarray(Transformer(cfg).apply({"params": trained}, TOKENS))
    return params, cfg, trained, ours


def test_peft_loads_the_adapter_onto_the_base_model_with_the_same_logits(adapted, tmp_path):
    params, cfg, trained, ours = adapted
    checkpoints.save_hf(tmp_path / "base", CFG, params)
    save_peft_adapter(tmp_path / "adapter", cfg, trained, base_model=str(tmp_path / "base"))
    saved = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_FILE).read_text())
    assert (saved["r"], saved["lora_alpha"], saved["peft_type"]) == (4, 12.0, "LORA")
    model = peft.PeftModel.from_pretrained(load_hf_model(tmp_path / "base"), tmp_path / "adapter").eval()
    np.testing.assert_allclose(hf_outputs(model, TOKENS), ours, atol=1e-4)
    np.testing.assert_allclose(hf_outputs(model.merge_and_unload(), TOKENS), ours, atol=1e-4)


def test_export_writes_the_merged_model_and_the_adapter(adapted, tmp_path):
    params, cfg, trained, ours = adapted
    export_model(tmp_path / "export", cfg, trained)
    np.testing.assert_allclose(hf_outputs(load_hf_model(tmp_path / "export"), TOKENS), ours, atol=1e-4)
    _, reloaded = checkpoints.load_hf(tmp_path / "export")
    assert not lora.has_adapters(reloaded)
    checkpoints.save_hf(tmp_path / "base", CFG, params)
    model = peft.PeftModel.from_pretrained(load_hf_model(tmp_path / "base"), tmp_path / "export" / ADAPTER_DIR)
    np.testing.assert_allclose(hf_outputs(model.eval(), TOKENS), ours, atol=1e-4)
