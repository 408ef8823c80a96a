"""Tests of the compiled sampler: parity with transformers, logprobs, distributions, EOS, seeds, sharding."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from instructjax import models, sampling
from instructjax.checkpoints import load_hf
from instructjax.models import ModelConfig, Transformer
from instructjax.testing.prompts import left_padded
from instructjax.models.functional import init_params

TINY = models.get_preset("tiny")
PROMPT_LENGTHS = (3, 9, 6)


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(TINY, jax.random.key(0))


def first_index(row, ids):
    hits = np.flatnonzero(np.isin(row, list(ids)))
    return int(hits[0]) if len(hits) else None


# --- parity with transformers ------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["llama", "gpt2"])
def test_greedy_matches_transformers_generate(tmp_path, variant):
    import torch
    from instructjax.testing.hf_models import load_hf_model, save_tiny_hf_model

    path = save_tiny_hf_model(tmp_path, variant)
    cfg, params = load_hf(path)
    hf_model = load_hf_model(path)
    eos, pad, new = 2, 0, 12
    tokens, mask = left_padded(PROMPT_LENGTHS, cfg.vocab_size)
    ours = sampling.generate(cfg, params, tokens, mask, rng=jax.random.key(0), max_new_tokens=new,
                             temperature=0.0, eos_id=eos, pad_id=pad)
    with torch.no_grad():
        want = hf_model.generate(torch.as_tensor(tokens, dtype=torch.long),
                                 attention_mask=torch.as_tensor(mask, dtype=torch.long), max_new_tokens=new,
                                 min_new_tokens=0, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                                 num_beams=1)[:, tokens.shape[1]:].numpy()
    want = np.pad(want, ((0, 0), (0, new - want.shape[1])), constant_values=pad)  # all rows ended early
    np.testing.assert_array_equal(np.asarray(ours.tokens), want)
    for row, m in zip(want, np.asarray(ours.mask)):  # the mask covers exactly the tokens up to EOS
        stop = first_index(row, [eos])
        assert m.sum() == (new if stop is None else stop + 1) and m[:m.sum()].all()


def test_logprobs_equal_training_forward(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=1)
    temperature = 0.7
    out = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(3), max_new_tokens=10,
                            temperature=temperature, top_k=40, top_p=0.9, eos_id=(5, 6, 7))
    seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
    seq_mask = jnp.concatenate([out.prompt_mask, out.mask], axis=1)
    logits = Transformer(TINY).apply({"params": tiny_params}, seq, attention_mask=seq_mask)
    p = out.prompt_tokens.shape[1]
    logprobs = jax.nn.log_softmax(logits[:, p - 1:-1] / temperature, axis=-1)  # index i - 1 predicts token i
    want = jnp.take_along_axis(logprobs, out.tokens[..., None], axis=-1)[..., 0]
    valid = np.asarray(out.mask)
    assert valid.sum() > 10
    np.testing.assert_allclose(np.asarray(out.logprobs)[valid], np.asarray(want)[valid], atol=1e-4)
    assert (np.asarray(out.logprobs)[~valid] == 0).all()


def test_values_equal_value_model_forward(tiny_params):
    value_params = init_params(TINY, jax.random.key(5), head="scalar")
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=2)
    out = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(1), max_new_tokens=6,
                            value_params=value_params)
    seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
    seq_mask = jnp.concatenate([out.prompt_mask, out.mask], axis=1)
    scores = Transformer(TINY, head="scalar").apply({"params": value_params}, seq, attention_mask=seq_mask)
    p = out.prompt_tokens.shape[1]
    np.testing.assert_allclose(np.asarray(out.values), np.asarray(scores[:, p - 1:-1]), atol=1e-5)


# --- sampling distribution ---------------------------------------------------------------------

FIXED_LOGITS = np.array([2.0, 1.6, 1.2, 1.0, 0.7, 0.3, 0.0, -0.4, -0.9, -1.5, -2.2, -3.0], np.float32)


def fixed_logits_model():
    """A model whose logits are FIXED_LOGITS whatever the input: every embedding row is the same
    one-hot vector, blocks are zero (the residual passes it through), the head reads it out."""
    vocab, d = len(FIXED_LOGITS), 8
    cfg = ModelConfig(vocab_size=vocab, d_model=d, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                      ffn_dim=8, tie_embeddings=False, norm_eps=0.0)
    params = jax.tree.map(jnp.zeros_like, init_params(cfg, jax.random.key(0)))
    one_hot = np.zeros(d, np.float32)
    one_hot[0] = 1.0
    params["embed"]["embedding"] = jnp.tile(jnp.asarray(one_hot), (vocab, 1))
    params["final_norm"]["scale"] = jnp.full((d,), np.sqrt(1.0 / d), jnp.float32)  # rms(one-hot) = 1/sqrt(d)
    head = np.zeros((d, vocab), np.float32)
    head[0] = FIXED_LOGITS
    params["lm_head"] = jnp.asarray(head)
    return cfg, params


def expected_distribution(logits, temperature, top_k, top_p):
    """Reference: HF order (temperature, top-k, top-p), renormalised over the kept tokens (float64)."""
    scaled = logits.astype(np.float64) / temperature
    keep = np.ones(len(scaled), bool)
    if top_k:
        keep &= scaled >= np.sort(scaled)[::-1][top_k - 1]
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    probs /= probs.sum()
    if top_p < 1:
        order = np.argsort(-probs)
        mass_before = np.cumsum(probs[order]) - probs[order]
        nucleus = np.zeros_like(keep)
        nucleus[order[mass_before < top_p]] = True
        probs = np.where(nucleus, probs, 0.0)
        probs /= probs.sum()
    return probs


def test_fixed_logits_model_is_fixed():
    cfg, params = fixed_logits_model()
    tokens, mask = left_padded((1, 4), cfg.vocab_size, low=0)
    logits = Transformer(cfg).apply({"params": params}, tokens, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(logits)[mask], np.tile(FIXED_LOGITS, (mask.sum(), 1)), atol=1e-5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 4, 1.0),
                                                     (1.0, 0, 0.8), (1.3, 6, 0.7)])
def test_sampling_frequencies_match_renormalised_distribution(temperature, top_k, top_p):
    cfg, params = fixed_logits_model()
    rows, steps = 200, 20  # 4000 draws from the same distribution
    tokens = np.ones((rows, 1), np.int32)
    out = sampling.generate(cfg, params, tokens, np.ones_like(tokens, bool), rng=jax.random.key(42),
                            max_new_tokens=steps, temperature=temperature, top_k=top_k, top_p=top_p,
                            prompt_bucket=None)
    draws = np.asarray(out.tokens).ravel()
    counts = np.bincount(draws, minlength=cfg.vocab_size)
    probs = expected_distribution(FIXED_LOGITS, temperature, top_k, top_p)
    assert counts[probs == 0].sum() == 0, "a filtered-out token was drawn"
    support = probs > 0
    result = scipy.stats.chisquare(counts[support], probs[support] * draws.size)
    assert result.pvalue > 1e-3, (counts, probs * draws.size, result)
    # the returned logprobs are those of the full (unfiltered) distribution at this temperature
    full = jax.nn.log_softmax(jnp.asarray(FIXED_LOGITS) / temperature)
    np.testing.assert_allclose(np.asarray(out.logprobs).ravel(), np.asarray(full)[draws], atol=1e-5)


def test_filter_logits_top_p_matches_sorted_reference():
    logits = jax.random.normal(jax.random.key(0), (6, 3000)) * 2.5
    for top_p in (0.3, 0.9, 0.999):
        kept = np.isfinite(np.asarray(sampling.filter_logits(logits, 0, top_p)))
        for row, keep in zip(np.asarray(logits), kept):
            probs = expected_distribution(row, 1.0, 0, top_p)
            want = probs > 0
            # float32 vs float64 masses may disagree on a token or two at the boundary
            assert (keep != want).sum() <= 2 and keep[np.argmax(row)]


def test_greedy_is_argmax_and_top_p_keeps_at_least_one_token():
    logits = jnp.array([[0.1, 3.0, 2.9, -1.0], [5.0, 5.0, 0.0, 0.0]])
    keys = sampling.row_keys(jax.random.key(0), 2)
    tokens, logprobs = sampling.sample_logits(logits, keys, temperature=0.0)
    np.testing.assert_array_equal(tokens, [1, 0])
    np.testing.assert_allclose(logprobs, jax.nn.log_softmax(logits)[jnp.arange(2), tokens], atol=1e-6)
    filtered = np.asarray(sampling.filter_logits(logits, 0, 1e-6))
    assert np.isfinite(filtered[0]).sum() == 1 and np.isfinite(filtered[1]).sum() == 2  # ties kept


# --- stopping -----------------------------------------------------------------------------------


def test_rows_stop_at_eos_and_loop_exits_early(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=4)
    new, pad = 16, 0
    free = np.asarray(sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(0), max_new_tokens=new,
                                        temperature=0.0).tokens)
    assert free.shape == (3, new)
    # each row's token at step 2 + i is a stop id: every row ends, the loop stops after the last one
    stops = {int(free[i, 2 + i]) for i in range(3)}
    out = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(0), max_new_tokens=new,
                            temperature=0.0, eos_id=sorted(stops), pad_id=pad)
    ends = [first_index(row, stops) for row in free]
    assert all(e is not None and e <= 4 for e in ends)
    got_tokens, got_mask = np.asarray(out.tokens), np.asarray(out.mask)
    for i, end in enumerate(ends):
        np.testing.assert_array_equal(got_tokens[i, :end + 1], free[i, :end + 1])
        assert got_mask[i, :end + 1].all() and not got_mask[i, end + 1:].any()
        assert (got_tokens[i, end + 1:] == pad).all()
    assert np.asarray(out.ended).all()
    assert int(out.num_steps) == max(ends) + 1 < new
    np.testing.assert_array_equal(out.lengths, [e + 1 for e in ends])


def test_per_row_stop_ids_and_ignore_eos(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=5)
    kw = dict(rng=jax.random.key(0), max_new_tokens=10, temperature=0.0)
    free = np.asarray(sampling.generate(TINY, tiny_params, tokens, mask, **kw).tokens)
    stop_ids = np.full((3, 2), -1, np.int32)
    stop_ids[0, 0], stop_ids[1, 1] = free[0, 5], free[1, 1]  # row 2 has no stop id
    out = sampling.generate(TINY, tiny_params, tokens, mask, stop_ids=stop_ids, **kw)
    lengths = np.asarray(out.lengths)
    assert lengths[0] == first_index(free[0], [free[0, 5]]) + 1
    assert lengths[1] == first_index(free[1], [free[1, 1]]) + 1
    assert lengths[2] == 10 and not out.ended[2]
    forced = sampling.generate(TINY, tiny_params, tokens, mask, stop_ids=stop_ids, eos_id=int(free[2, 0]),
                               ignore_eos=True, **kw)
    assert np.asarray(forced.mask).all() and int(forced.num_steps) == 10
    np.testing.assert_array_equal(forced.tokens, free)


# --- seeds, n samples, bucketing, dtypes, streaming ------------------------------------------------


def test_same_seed_same_output_different_seed_different_output(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=6)
    kw = dict(max_new_tokens=12, temperature=1.0)
    a = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(7), **kw)
    b = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(7), **kw)
    c = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(8), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).mean() > 0.5


def test_n_samples_per_prompt_are_prompt_major(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=7)
    n = 4
    out = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(1), max_new_tokens=8, n=n)
    assert out.tokens.shape == (3 * n, 8) and out.prompt_tokens.shape[0] == 3 * n
    np.testing.assert_array_equal(np.asarray(out.prompt_tokens)[::n, -tokens.shape[1]:], tokens)
    samples = np.asarray(out.tokens).reshape(3, n, 8)
    assert all(len({tuple(s) for s in samples[i]}) == n for i in range(3))  # distinct samples of one prompt
    # row r's randomness depends on the seed and r only: explicitly repeated prompts give the same rows
    repeated = sampling.generate(TINY, tiny_params, np.repeat(tokens, n, 0), np.repeat(mask, n, 0),
                                 rng=jax.random.key(1), max_new_tokens=8)
    np.testing.assert_array_equal(repeated.tokens, out.tokens)


def test_bucket_length_and_bucketing_does_not_change_greedy_output(tiny_params):
    assert [sampling.bucket_length(n) for n in (1, 8, 9, 33, 64, 65, 130)] == [8, 8, 16, 64, 64, 128, 192]
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=8)
    kw = dict(rng=jax.random.key(0), max_new_tokens=8, temperature=0.0)
    bucketed = sampling.generate(TINY, tiny_params, tokens, mask, **kw)
    exact = sampling.generate(TINY, tiny_params, tokens, mask, prompt_bucket=None, **kw)
    assert bucketed.prompt_tokens.shape[1] == 16 and exact.prompt_tokens.shape[1] == 9
    np.testing.assert_array_equal(bucketed.tokens, exact.tokens)
    np.testing.assert_allclose(bucketed.logprobs, exact.logprobs, atol=1e-5)


def test_bfloat16_compute_follows_float32(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=9)
    kw = dict(rng=jax.random.key(0), max_new_tokens=6, temperature=0.0)
    f32 = sampling.generate(TINY, tiny_params, tokens, mask, **kw)
    for cache_dtype in (None, "bfloat16"):
        bf16 = sampling.generate(TINY, tiny_params, tokens, mask, dtype="bfloat16", cache_dtype=cache_dtype, **kw)
        assert bf16.tokens.dtype == jnp.int32 and bf16.logprobs.dtype == jnp.float32
        # greedy paths agree until the first near-tie; the first token's logprob is close
        np.testing.assert_allclose(bf16.logprobs[:, 0], f32.logprobs[:, 0], atol=0.1)
    # one bf16 row runs as two on CPU (a discarded, ended second row): same result as inside a batch
    one = sampling.generate(TINY, tiny_params, tokens[1:2], mask[1:2], dtype="bfloat16", **kw)
    batch = sampling.generate(TINY, tiny_params, tokens, mask, dtype="bfloat16", **kw)
    assert one.tokens.shape == (1, 6) and one.ended.shape == (1,)
    np.testing.assert_array_equal(one.tokens[0], batch.tokens[1])


def test_stream_callback_sees_every_token_column(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size, seed=10)
    seen = []
    out = sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(0), max_new_tokens=7,
                            stream=lambda step, toks, active: seen.append((step, toks.copy(), active.copy())))
    assert [s for s, _, _ in seen] == list(range(7))
    np.testing.assert_array_equal(np.stack([t for _, t, _ in seen], 1), out.tokens)
    np.testing.assert_array_equal(np.stack([a for _, _, a in seen], 1), out.mask)


def test_bad_inputs_raise(tiny_params):
    tokens, mask = left_padded(PROMPT_LENGTHS, TINY.vocab_size)
    right_padded = mask[:, ::-1]
    with pytest.raises(ValueError, match="left-padded"):
        sampling.generate(TINY, tiny_params, tokens, right_padded, rng=jax.random.key(0), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(0), max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        sampling.generate(TINY, tiny_params, tokens, mask, rng=jax.random.key(0), max_new_tokens=2, top_p=0.0)


# --- sharding -----------------------------------------------------------------------------------


@pytest.mark.needs_devices(8)
def test_sharded_generate_equals_unsharded(tiny_params):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    tokens, mask = left_padded((3, 9, 6, 2, 7, 5, 8, 4), TINY.vocab_size, seed=11)
    value_params = init_params(TINY, jax.random.key(5), head="scalar")
    kw = dict(rng=jax.random.key(2), max_new_tokens=9, temperature=1.0, top_k=50, eos_id=(4, 5, 6, 7),
              n=2, value_params=value_params)
    single = sampling.generate(TINY, tiny_params, tokens, mask, **kw)
    sharded = sampling.generate(TINY, tiny_params, tokens, mask, mesh=mesh, **kw)
    assert sharded.tokens.sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_array_equal(sharded.mask, single.mask)
    np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-5)
    np.testing.assert_allclose(sharded.values, single.values, atol=1e-5)
    # 4 prompts do not split over 8 devices but their 8 samples do: prompts are repeated before the prefill
    half = sampling.generate(TINY, tiny_params, tokens[4:], mask[4:], mesh=mesh, **kw)
    np.testing.assert_array_equal(half.tokens, sampling.generate(TINY, tiny_params, tokens[4:], mask[4:], **kw).tokens)
    with pytest.raises(ValueError, match="divide"):
        sampling.generate(TINY, tiny_params, tokens[:3], mask[:3], mesh=mesh, **kw)


# --- the real default model ---------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_greedy_answer_names_paris():
    from instructjax.checkpoints import load_default_model

    cfg, params, tok = load_default_model()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids, mask = tok.encode_batch([prompt])
    out = sampling.generate(cfg, params, ids, mask, rng=jax.random.key(0), max_new_tokens=24, temperature=0.0,
                            eos_id=tok.eos_id, pad_id=tok.pad_id)
    answer = tok.decode(np.asarray(out.tokens)[0][np.asarray(out.mask)[0]])
    assert "Paris" in answer, answer
    assert bool(out.ended[0])


@pytest.mark.slow
def test_chat_one_shot_prints_paris():
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "chat.py")
    env = dict(os.environ, XLA_FLAGS="")
    result = subprocess.run([sys.executable, script, "--checkpoint=default", "--temperature=0",
                             "--prompt=What is the capital of France?"], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Paris" in result.stdout, result.stdout
