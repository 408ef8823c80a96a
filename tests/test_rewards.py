"""Reward model: scoring at the last real token, one forward per completion, the ranking objective,
evaluation metrics, normalisation, export to transformers and loading."""

import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import instructjax as ij  # noqa: F401  (ij.rewards is imported below explicitly too)
from instructjax import losses, rewards
from instructjax.models import ModelConfig, Transformer, get_preset
from instructjax.models.functional import init_params
from instructjax.tasks import constraints as C
from instructjax.testing import tiny_tokenizer
from instructjax.train import make_optimizer
from instructjax.train.optim import OptimConfig
from instructjax.train.state import TrainState
from instructjax.train.step import make_train_step
from instructjax.data.sft import sft_example
from instructjax.rewards.evaluation import ComparisonScores, score_histogram
from instructjax.rewards.io import export_reward_model
from instructjax.rewards.normalization import NORMALIZATION_FILE, fit_normalization, fold_normalization
from instructjax.rewards.objective import RewardLossConfig, derived_metrics, reward_loss_fn
from instructjax.rewards.references import demonstration_scores
from instructjax.rewards.scoring import completion_scores, last_token_index, reward_params_from_lm
from instructjax.tasks.instructions import compose_prompt

CFG = get_preset("tiny", num_layers=1, max_len=64)
score_jit = jax.jit(rewards.sequence_scores, static_argnums=0)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0), head="scalar")


def comparison_batch(b=3, k=4, t=12, seed=0, vocab=CFG.vocab_size):
    """Right-padded rows of random lengths, some completion slots invalid, ranks with ties."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, (b, k, t)).astype(np.int32)
    lengths = rng.integers(3, t + 1, (b, k))
    mask = np.arange(t)[None, None, :] < lengths[..., None]
    valid = np.ones((b, k), bool)
    valid[0, 3] = False
    mask[0, 3] = False
    tokens[~mask] = 2
    ranks = rng.integers(0, 3, (b, k)).astype(np.int32)
    return {"tokens": tokens, "attention_mask": mask, "ranks": ranks, "valid": valid,
            "last_index": (lengths - 1).astype(np.int32)}


def noisy(p, scale=0.05, bias=0.5):
    """Params with noise on every leaf and a score bias, so that the raw scores vary and have a non-zero mean."""
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    p = jax.tree.unflatten(treedef, [np.asarray(x + scale * jax.random.normal(k, x.shape))
                                     for x, k in zip(leaves, keys)])
    return {**p, "score_head": {**p["score_head"], "bias": p["score_head"]["bias"] + bias}}


def full_scores(p, tokens, mask):
    return np.asarray(Transformer(CFG, head="scalar").apply({"params": p}, tokens, attention_mask=mask))


def test_last_token_index_left_and_right_padding():
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 2, 4])


def test_sequence_scores_read_the_last_real_token(params):
    batch = comparison_batch()
    tokens, mask = batch["tokens"][1], batch["attention_mask"][1]
    ours = np.asarray(rewards.sequence_scores(CFG, params, tokens, mask))
    every = full_scores(params, tokens, mask)
    np.testing.assert_allclose(ours, every[np.arange(len(tokens)), batch["last_index"][1]], atol=1e-6)
    # the same sequences left-padded score the same
    left_tokens, left_mask = np.full_like(tokens, 2), np.zeros_like(mask)
    for i, n in enumerate(mask.sum(1)):
        left_tokens[i, -n:], left_mask[i, -n:] = tokens[i, :n], True
    np.testing.assert_allclose(rewards.sequence_scores(CFG, params, left_tokens, left_mask), ours, atol=1e-5)


def test_each_completion_forwarded_once_per_step(params):
    """Tracing the loss and its gradient calls the Transformer once, on all B * K rows together."""
    batch = comparison_batch(b=3, k=4, t=12)
    calls = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Transformer) and context.method_name == "__call__":
            calls.append(args[0].shape)
        return next_fun(*args, **kwargs)

    tx = make_optimizer(OptimConfig(lr=1e-3))
    step = jax.jit(make_train_step(reward_loss_fn(CFG), tx))
    with nn.intercept_methods(record):
        state, metrics = step(TrainState.create(params, tx), batch, jax.random.key(0))
    assert calls == [(3 * 4, 12)]
    assert np.isfinite(metrics["loss"]) and int(state.step) == 1
    assert metrics["pairs"] == losses.ordered_pair_mask(jnp.asarray(batch["ranks"]), jnp.asarray(batch["valid"])).sum()


def mean_reward_loss(params, batch, options):
    """(mean loss, derived metrics) of one comparison batch: the loss the train step minimises."""
    loss_sum, aux = reward_loss_fn(CFG, options)(params, batch, jax.random.key(0))
    return loss_sum / max(int(aux["weight"]), 1), derived_metrics(aux["totals"])


def test_loss_equals_ranking_loss_of_separately_scored_completions(params):
    batch = comparison_batch(seed=1)
    b, k, _ = batch["tokens"].shape
    separate = np.array([[score_jit(CFG, params, batch["tokens"][i, j][None],
                                                  batch["attention_mask"][i, j][None])[0] if batch["valid"][i, j]
                          else 0.0 for j in range(k)] for i in range(b)])
    options = RewardLossConfig(margin=0.5)
    loss, metrics = mean_reward_loss(params, batch, options)
    expected = losses.pairwise_ranking_loss(jnp.asarray(separate), batch["ranks"], batch["valid"], margin=0.5)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    pairs = np.asarray(losses.ordered_pair_mask(jnp.asarray(batch["ranks"]), jnp.asarray(batch["valid"])))
    accuracy = (pairs & (separate[:, :, None] > separate[:, None, :])).sum() / pairs.sum()
    np.testing.assert_allclose(metrics["accuracy"], accuracy, rtol=1e-6)
    # centering is per prompt (mean r^2 of its valid completions), so that microbatches accumulate exactly
    loss, _ = mean_reward_loss(params, batch, RewardLossConfig(center_coef=0.01))
    per_prompt = [losses.pairwise_ranking_loss(jnp.asarray(separate[i:i + 1]), batch["ranks"][i:i + 1],
                                               batch["valid"][i:i + 1])
                  + 0.01 * np.mean(separate[i][batch["valid"][i]] ** 2) for i in range(b)]
    np.testing.assert_allclose(loss, np.mean(per_prompt), rtol=1e-5)


def test_microbatches_accumulate_to_the_full_batch(params):
    """Prompts with different K, and one with only a tie: per-microbatch means would be wrong."""
    batch = comparison_batch(b=4, k=4, seed=2)
    batch["valid"][1, 2:] = False
    batch["ranks"] = np.array([[0, 1, 2, 3], [1, 0, 0, 0], [1, 1, 1, 1], [3, 0, 2, 0]], np.int32)  # row 2: all tied
    tx = make_optimizer(OptimConfig(lr=1e-3, eps=1e-6))
    options = RewardLossConfig(margin=0.1, center_coef=0.01)
    out = []
    for m in (1, 4):
        step = jax.jit(make_train_step(reward_loss_fn(CFG, options), tx, num_microbatches=m))
        out.append(jax.device_get(step(TrainState.create(params, tx), batch, jax.random.key(0))))
    (ref_state, ref_metrics), others = out[0], out[1:]
    assert ref_metrics["prompts"] == 3
    for state, metrics in others:
        for key in ("prompts", "pairs", "correct_pairs", "completions"):
            assert metrics[key] == ref_metrics[key]
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.params,
                     ref_state.params)


def test_instructgpt_check_value_through_the_metrics():
    s = ComparisonScores(np.array([[1.0, 0.5, 0.0, -1.0]], np.float32), np.array([[0, 1, 2, 3]]),
                         np.ones((1, 4), bool))
    m = rewards.comparison_metrics(s)
    np.testing.assert_allclose(m["loss"], 0.3171698, atol=1e-6)
    assert m["accuracy"] == 1.0 and m["pairs"] == 6 and m["accuracy_k4"] == 1.0
    assert (m["pairs_gap1"], m["pairs_gap2"], m["pairs_gap3"]) == (3, 2, 1)


def test_metrics_by_k_and_rank_gap_match_brute_force():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(40, 5)).astype(np.float32)
    ranks = rng.integers(0, 4, (40, 5))
    valid = np.arange(5)[None] < rng.integers(2, 6, (40, 1))
    m = rewards.comparison_metrics(ComparisonScores(scores, ranks, valid))
    by_k, by_gap, all_pairs = {}, {}, []
    for s, r, v in zip(scores, ranks, valid):
        for w, l in itertools.permutations(range(5), 2):
            if v[w] and v[l] and r[w] < r[l]:
                ok = s[w] > s[l]
                all_pairs.append(ok)
                by_k.setdefault(v.sum(), []).append(ok)
                by_gap.setdefault(r[l] - r[w], []).append(ok)
    assert m["accuracy"] == pytest.approx(np.mean(all_pairs))
    for kk, oks in by_k.items():
        assert m[f"accuracy_k{kk}"] == pytest.approx(np.mean(oks)) and m[f"pairs_k{kk}"] == len(oks)
    for g, oks in by_gap.items():
        assert m[f"accuracy_gap{g}"] == pytest.approx(np.mean(oks)) and m[f"pairs_gap{g}"] == len(oks)
    expected_loss = float(losses.pairwise_ranking_loss(jnp.asarray(scores), jnp.asarray(ranks), jnp.asarray(valid)))
    assert m["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_accuracy_by_family_counts_each_pair_towards_every_family_of_its_prompt():
    both = compose_prompt("Describe tea.", [C.make_constraint(C.MAX_WORDS, n=5),
                                            C.make_constraint(C.LOWERCASE)])
    one = compose_prompt("Describe tea.", [C.make_constraint(C.END_PHRASE, phrase="Hope this helps!")])
    plain = "What is tea?"  # no constraint sentence: counts towards no family
    # rows 0 (both): scores 1, 0, 2 at ranks 0, 1, 2 -> pairs (0,1) right, (0,2) wrong, (1,2) wrong;
    # row 1 (one): two completions, the better one scored higher -> right.
    s = ComparisonScores(np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]], np.float32),
                         np.array([[0, 1, 2], [0, 1, 0]]), np.array([[True, True, True], [True, True, False]]),
                         np.array([7, 3], np.int32))
    rows, correct = rewards.pair_results(s)
    assert rows.tolist() == [0, 0, 0, 1] and correct.tolist() == [True, False, False, True]
    # by hand: "both" has 4 pairs, 3 right; "one" 2 pairs, none right; "plain" is left out
    prompts = [both, one, both, plain, both, one, both]
    rates = rewards.accuracy_by_family(prompts, [True, False, False, True, True, False, True])
    assert list(rates) == [C.END_PHRASE, C.LOWERCASE, C.MAX_WORDS]
    for family in (C.MAX_WORDS, C.LOWERCASE):
        assert (rates[family].successes, rates[family].total) == (3, 4)
        assert rates[family].interval == pytest.approx((0.3006, 0.9544), abs=1e-4)  # Wilson, 3 of 4
    assert (rates[C.END_PHRASE].successes, rates[C.END_PHRASE].total) == (0, 2)
    assert rates[C.END_PHRASE].interval == pytest.approx((0.0, 0.6576), abs=1e-4)  # z^2 / (n + z^2)
    assert rewards.accuracy_by_family([plain], [True]) == {}
    with pytest.raises(ValueError, match="2 prompts for 1 pairs"):
        rewards.accuracy_by_family([both, one], [True])


def test_score_histogram_is_written(tmp_path, params):
    batch = comparison_batch()
    scores = completion_scores(CFG, params, batch["tokens"], batch["attention_mask"])
    collected = ComparisonScores(np.asarray(scores, np.float32), np.asarray(batch["ranks"], np.int32),
                                 np.asarray(batch["valid"], bool))
    path = score_histogram(tmp_path / "hist.png", collected, reference=np.zeros(5))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def rows_scorer(cfg, p):
    return lambda b: (score_jit(cfg, p, b["tokens"], b["attention_mask"]), b["attention_mask"].any(1))


def demonstration_batches(tok, n=10, max_len=48):
    records = [{"prompt": f"Say {i}", "response": "ok " * (i % 4 + 1), "source": f"demo:{i}"} for i in range(n)]
    rows = [sft_example(r, tok, ij.data.SFTConfig(max_len=max_len)).element for r in records]
    tokens = np.full((n, max_len), tok.pad_id, np.int32)
    mask = np.zeros((n, max_len), bool)
    for i, row in enumerate(rows):
        tokens[i, :len(row["tokens"])], mask[i, :len(row["tokens"])] = row["tokens"], True
    return [{"tokens": tokens[:6], "attention_mask": mask[:6]}, {"tokens": tokens[6:], "attention_mask": mask[6:]}]


@pytest.mark.parametrize("unit_std", [False, True])
def test_normalisation_gives_demonstrations_mean_zero(params, unit_std):
    tok = tiny_tokenizer()
    batches = demonstration_batches(tok)
    params = noisy(params)
    raw = demonstration_scores(rows_scorer(CFG, params), batches)
    assert len(raw) == 10 and abs(raw.mean()) > 1e-2
    norm = fit_normalization(raw, unit_std=unit_std)
    folded = fold_normalization(params, norm)
    after = demonstration_scores(rows_scorer(CFG, folded), batches)
    assert abs(after.mean()) < 1e-5
    np.testing.assert_allclose(after, norm.apply(raw), atol=1e-5)
    if unit_std:
        assert after.std() == pytest.approx(1.0, abs=1e-4)
    else:
        np.testing.assert_allclose(after - after.mean(), raw - raw.mean(), atol=1e-5)


def test_fit_normalization_rejects_bad_scores():
    with pytest.raises(ValueError, match="not finite"):
        fit_normalization([1.0, np.nan])
    with pytest.raises(ValueError, match="all equal"):
        fit_normalization([2.0, 2.0], unit_std=True)
    with pytest.raises(ValueError, match="no demonstrations scores"):
        fit_normalization([])


def test_reward_params_from_lm_swaps_the_head():
    lm = init_params(CFG, jax.random.key(0), head="lm")
    rm = reward_params_from_lm(CFG, lm, jax.random.key(1))
    assert "lm_head" not in rm and rm["score_head"]["kernel"].shape == (CFG.d_model, 1)
    assert not rm["score_head"]["bias"].any()
    std = (CFG.d_model + 1) ** -0.5
    assert 0.5 * std < rm["score_head"]["kernel"].std() < 1.5 * std
    expected = init_params(CFG, jax.random.key(0), head="scalar")
    assert jax.tree.structure(rm) == jax.tree.structure(expected)


GPT2_CFG = ModelConfig(arch="gpt2", vocab_size=320, d_model=32, num_layers=2, num_heads=4, num_kv_heads=4,
                       head_dim=8, ffn_dim=64, norm="layer", activation="gelu_tanh", position="learned",
                       qkv_bias=True, out_bias=True, tie_embeddings=True, max_len=64)


@pytest.mark.parametrize("cfg", [CFG, GPT2_CFG], ids=["llama", "gpt2"])
def test_exported_reward_model_scores_equal_in_transformers(tmp_path, cfg):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from instructjax.testing.hf_models import load_hf_model

    tok = tiny_tokenizer()
    p = noisy(init_params(cfg, jax.random.key(2), head="scalar"))
    batches = demonstration_batches(tok)
    raw = demonstration_scores(rows_scorer(cfg, p), batches)
    norm = fit_normalization(raw, unit_std=True)
    export_reward_model(tmp_path, cfg, p, tok, norm)

    rm = rewards.load_reward_model(tmp_path)
    assert rm.normalization == norm and rm.tokenizer.pad_id != tok.eos_id
    ours = np.concatenate([np.asarray(rm(b["tokens"], b["attention_mask"])) for b in batches])
    np.testing.assert_allclose(ours, norm.apply(raw), atol=1e-5)
    assert abs(ours.mean()) < 1e-5

    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["pad_token_id"] != hf_config["eos_token_id"] == tok.eos_id
    notes = json.loads((tmp_path / NORMALIZATION_FILE).read_text())
    offset = notes["transformers_offset"]
    assert offset == hf_config.get("instructjax_score_bias", 0.0)
    if cfg.norm == "layer":
        assert offset == 0.0  # GPT-2: the bias folds exactly into the final LayerNorm
    model = load_hf_model(tmp_path, head="scalar")
    theirs = []
    for b in batches:  # rows end with EOS, right-padded with the exported pad id as transformers expects
        tokens = np.where(b["attention_mask"], b["tokens"], hf_config["pad_token_id"])
        with torch.no_grad():
            out = model(input_ids=torch.as_tensor(tokens).long(),
                        attention_mask=torch.as_tensor(b["attention_mask"]).long())
        theirs.append(out.logits[:, 0].numpy())
    diff = np.abs(np.concatenate(theirs) + offset - ours).max()
    print(f"{cfg.arch}: max |ours - (transformers + {offset:.4f})| = {diff:.2e}")
    assert diff <= 1e-4


def test_load_reward_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reward model here"):
        rewards.load_reward_model(tmp_path)
    lm_cfg = get_preset("tiny", num_layers=1)
    ij.checkpoints.save_hf(tmp_path / "lm", lm_cfg, init_params(lm_cfg, jax.random.key(0)))
    with pytest.raises(ValueError, match="a language model, not a reward model"):
        rewards.load_reward_model(tmp_path / "lm")
