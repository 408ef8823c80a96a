"""SFT with LoRA end to end: adapters trained alone, merged + PEFT export, bit-exact resume after SIGKILL."""

import safetensors.numpy

from instructjax import checkpoints
from instructjax.checkpoints.peft import ADAPTER_WEIGHTS_FILE
from instructjax.testing.experiments import assert_same_run, kill_after_checkpoint, run_experiment
from instructjax.train.export import ADAPTER_DIR

# checkpoints at 4, 8, 12; LoRA dropout on, so that the resumed run must also replay the dropout keys
FLAGS = ("--config.num_steps=12", "--config.checkpoint.every_steps=4", "--config.eval.every_steps=0",
         "--config.lora.rank=4", "--config.lora.dropout=0.1", "--config.lora.targets=('q_proj','v_proj','down_proj')")


def run_script(workdir, log, *extra, wait=True):
    return run_experiment("sft", workdir, log, *FLAGS, *extra, wait=wait, timeout_s=300)


def test_lora_sft_exports_and_resumes_after_sigkill_bit_exact(tmp_path):
    reference = tmp_path / "reference"
    run_script(reference, tmp_path / "reference.log")
    adapter = safetensors.numpy.load_file(str(reference / "export" / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE))
    assert len(adapter) == 2 * 2 * 3  # 2 layers x 3 targets x (lora_A, lora_B)
    assert all(abs(w).max() > 0 for name, w in adapter.items() if "lora_B" in name)  # trained away from 0
    _, params = checkpoints.load_hf(reference / "export")  # merged: plain HF weights
    assert "lora_a" not in params["layers_0"]["attn"]["q"]

    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.2"  # time to kill the run between checkpoints 4 and 8
    process = run_script(workdir, tmp_path / "killed.log", slow, wait=False)
    kill_after_checkpoint(process, workdir / "checkpoints" / "4", timeout_s=240)
    assert not (workdir / "export").exists()
    run_script(workdir, tmp_path / "resumed.log", slow)
    assert "resum" in (tmp_path / "resumed.log").read_text().lower()
    assert_same_run(workdir, reference)
    resumed = safetensors.numpy.load_file(str(workdir / "export" / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE))
    assert all((resumed[k] == adapter[k]).all() for k in adapter)
