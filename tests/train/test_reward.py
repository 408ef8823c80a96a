"""The reward trainer end to end on a synthetic task whose preferences are decidable from the text:
it learns (validation accuracy > 0.9), normalises, exports (transformers agrees), and resumes
exactly after SIGKILL."""

import json
import pathlib
import re

import numpy as np
import pytest

import instructjax as ij
from instructjax import rewards
from instructjax.train import read_metrics, train_reward_model
from instructjax.testing.experiments import (assert_same_export, assert_same_run, config_leaf_paths,
                                              kill_after_checkpoint, kill_at_random_points, load_experiment_config,
                                              run_experiment)
from instructjax.data.sft import sft_example
from instructjax.rewards.normalization import NORMALIZATION_FILE, read_normalization

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO / "experiments" / "configs" / "reward.py"
LETTERS = "abcdefgh"


def load_config(preset="tiny", **overrides):
    return load_experiment_config("reward", preset, overrides)


def write_synthetic(directory, seed=0, n_train=240, n_validation=64, n_demos=24):
    """Comparisons of K = 2..4 distinct 8-letter strings over "abcdefgh", ranked by how many "a"
    they contain (more is better, equal counts tie); demonstrations in the same format."""
    rng = np.random.default_rng(seed)

    def word():
        return "".join(rng.choice(list(LETTERS), 8))

    def comparison():
        while True:
            completions = sorted({word() for _ in range(int(rng.integers(2, 5)))})
            counts = [c.count("a") for c in completions]
            if len(completions) >= 2 and len(set(counts)) > 1:
                order = sorted(set(counts), reverse=True)
                return {"prompt": "Which has more a?", "completions": completions,
                        "ranking": [order.index(c) for c in counts]}

    files = {}
    for name, n in (("train", n_train), ("validation", n_validation)):
        files[name] = directory / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(comparison()) + "\n" for _ in range(n)))
    files["demos"] = directory / "demos.jsonl"
    files["demos"].write_text("".join(json.dumps({"prompt": "Which has more a?", "response": word()}) + "\n"
                                      for _ in range(n_demos)))
    return files


def synthetic_overrides(files):
    """The tiny preset on the synthetic files: raw prompts, short rows; checkpoints at 10, 20, 30, 40."""
    return {"data.train_files": (str(files["train"]),), "data.validation_files": (str(files["validation"]),),
            "data.chat_template": False, "data.max_len": 32, "normalize.data.train_files": (str(files["demos"]),),
            "num_steps": 40, "checkpoint.every_steps": 10, "eval.every_steps": 20}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """One uninterrupted run (in this process: 8 fake devices, data axis 8)."""
    root = tmp_path_factory.mktemp("reward")
    files = write_synthetic(root)
    overrides = synthetic_overrides(files)
    workdir = root / "run"
    state = train_reward_model(load_config(**overrides), workdir)
    return workdir, state, files, overrides


def test_synthetic_task_is_learned(synthetic_run):
    workdir, state, _, _ = synthetic_run
    assert int(state.step) == 40
    records = read_metrics(workdir / "metrics.jsonl")
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [20, 40]
    final = evals[-1]
    print({k: v for k, v in final.items() if k.startswith("eval/")})
    assert final["eval/accuracy"] > 0.9
    assert final["eval/loss"] < 0.3
    assert {"eval/accuracy_k2", "eval/accuracy_k3", "eval/accuracy_k4", "eval/accuracy_gap1"} <= set(final)
    train = [r for r in records if "train/loss" in r]
    assert len(train) == 40 and "train/accuracy" in train[0] and train[0]["train/prompts"] == 8
    assert np.mean([r["train/loss"] for r in train[-5:]]) < np.mean([r["train/loss"] for r in train[:5]])
    summary = json.loads((workdir / "reward_eval.json").read_text())
    assert summary["validation"]["accuracy"] == final["eval/accuracy"]  # a positive gain keeps the order
    assert "families" not in summary["validation"]  # the synthetic prompts have no constraint sentences
    assert (workdir / "score_histogram.png").read_bytes()[:4] == b"\x89PNG"


def demonstration_rows(files, tok):
    rows = [sft_example({**json.loads(line), "source": "demo"}, tok,
                        ij.data.SFTConfig(max_len=32, chat_template=False)).element["tokens"]
            for line in files["demos"].read_text().splitlines()]
    tokens = np.full((len(rows), 32), tok.pad_id, np.int32)
    mask = np.zeros((len(rows), 32), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], mask[i, :len(row)] = row, True
    return tokens, mask


def test_normalised_demonstrations_score_mean_zero(synthetic_run):
    workdir, _, files, _ = synthetic_run
    rm = rewards.load_reward_model(workdir)
    assert rm.normalization.reference == "demonstrations" and rm.normalization.count == 24
    tokens, mask = demonstration_rows(files, rm.tokenizer)
    scores = np.asarray(rm(tokens, mask))
    assert scores.dtype == np.float32 and scores.shape == (24,)
    assert abs(scores.mean()) < 1e-5, scores.mean()
    assert scores.std() > 0.1  # not a degenerate model


def test_export_scores_equal_in_transformers(synthetic_run):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    workdir, _, files, _ = synthetic_run
    rm = rewards.load_reward_model(workdir)
    tokens, mask = demonstration_rows(files, rm.tokenizer)
    ours = np.asarray(rm(tokens, mask))
    export = workdir / "export"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(export)
    assert hf_tok.pad_token_id == model.config.pad_token_id != hf_tok.eos_token_id
    texts = [rm.tokenizer.decode(t[m].tolist(), skip_special_tokens=False) for t, m in zip(tokens, mask)]
    enc = hf_tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)  # padded by transformers
    with torch.no_grad():
        theirs = model(**enc).logits[:, 0].numpy()
    offset = json.loads((export / NORMALIZATION_FILE).read_text())["transformers_offset"]
    # Llama-family classifiers have no score bias: the normalisation bias is config.json's instructjax_score_bias
    assert offset == json.loads((export / "config.json").read_text()).get("instructjax_score_bias", 0.0)
    diff = np.abs(theirs + offset - ours).max()
    print(f"max |ours - (transformers + {offset:.4f})| = {diff:.2e}")
    assert diff <= 1e-4


def run_script(workdir, log, overrides, *extra, wait=True):
    def flag(key, value):
        return f"--config.{key}={value!r}" if isinstance(value, tuple) else f"--config.{key}={value}"

    return run_experiment("reward", workdir, log, *(flag(k, v) for k, v in overrides.items()), *extra, wait=wait,
                          timeout_s=300)


def test_resume_after_sigkill_gives_the_same_model(synthetic_run, tmp_path):
    reference, _, _, overrides = synthetic_run
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.2"  # the steps after checkpoint 10 take seconds: time to kill
    process = run_script(workdir, tmp_path / "killed.log", overrides, slow, wait=False)
    kill_after_checkpoint(process, workdir / "checkpoints" / "10", timeout_s=240)
    assert not (workdir / "export").exists()
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) < 40

    run_script(workdir, tmp_path / "resumed.log", overrides, slow)
    assert_same_run(workdir, reference)
    for name in (NORMALIZATION_FILE, "config.json"):
        assert (workdir / "export" / name).read_text() == (reference / "export" / name).read_text()


def test_killed_at_5_random_points_gives_the_same_model(synthetic_run, tmp_path):
    reference, _, _, overrides = synthetic_run
    workdir = tmp_path / "run"
    slow = "--config.debug.step_delay_s=0.1"

    def start(i):
        return run_script(workdir, tmp_path / f"killed_{i}.log", overrides, slow, wait=False)

    points = kill_at_random_points(start, workdir / "metrics.jsonl", overrides["num_steps"], seed=2, kills=5)
    print("killed after (step, seconds):", points)
    run_script(workdir, tmp_path / "final.log", overrides, slow)
    assert_same_run(workdir, reference)
    assert_same_export(workdir, reference)


def test_presets_and_bad_settings():
    declared = set()
    for path in (CONFIG_FILE, REPO / "instructjax" / "train" / "config.py"):
        declared |= set(re.findall(r"^\s*(?:c|config)\.([\w.]+) = .*  # ", path.read_text(), re.M))
    for preset in ("tiny", "smollm2"):
        undocumented = [p for p in config_leaf_paths(load_config(preset))
                        if not any(p == d or p.endswith("." + d) for d in declared)]
        assert not undocumented
    config = load_config("smollm2")
    assert config.init.source == "workdir" and config.num_epochs == 1.0 and config.optim.lr == 9e-6
    assert config.batch_size == 64 and config.normalize.reference == "demonstrations"
    with pytest.raises(ValueError, match="unknown reward preset"):
        load_config("huge")
    with pytest.raises(ValueError, match="without dropout"):
        train_reward_model(load_config(**{"model.dropout_rate": 0.1}), "/nonexistent/never/created")


def test_normalising_on_sft_samples_without_export(tmp_path):
    """reference sft_samples: one response per prompt sampled from the initial (SFT) policy; with
    export off the normalisation is still written, to the workdir."""
    config = load_config(**{"num_steps": 2, "checkpoint.every_steps": 2, "eval.every_steps": 0, "export": False,
                            "normalize.reference": "sft_samples", "normalize.max_examples": 8,
                            "normalize.max_new_tokens": 8, "normalize.unit_std": True})
    train_reward_model(config, tmp_path)
    found = read_normalization(tmp_path)
    assert found is not None
    norm, notes = found
    assert norm.reference == "sft_samples" and norm.count == 8 and notes == {"folded_into_params": False}
    assert norm.gain == pytest.approx(1 / norm.raw_std) and norm.bias == pytest.approx(-norm.raw_mean / norm.raw_std)
    summary = json.loads((tmp_path / "reward_eval.json").read_text())
    assert summary["normalization_data"] == {"records": 8}
    assert not (tmp_path / "export").exists()
    with pytest.raises(FileNotFoundError, match="no reward model here"):
        rewards.load_reward_model(tmp_path)


def test_a_batch_that_does_not_split_into_microbatches_is_refused_before_any_data_is_built(tmp_path):
    config = load_config(batch_size=6, microbatches=4)
    with pytest.raises(ValueError, match=r"config.batch_size=6 with microbatches=4"):
        train_reward_model(config, tmp_path)
    assert not (tmp_path / "data").exists()
