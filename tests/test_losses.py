"""Pairwise ranking loss, token log-probabilities and the DPO / IPO losses against the check values of
docs/formulas.md and brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax import losses


def brute_force_loss(scores, ranks, valid, margin=0.0):
    per_prompt = []
    for s, r, v in zip(scores, ranks, valid):
        terms = [np.logaddexp(0.0, -(s[w] - s[l] - margin))
                 for w, l in itertools.permutations(range(len(s)), 2) if v[w] and v[l] and r[w] < r[l]]
        if terms:
            per_prompt.append(np.mean(terms))
    return np.mean(per_prompt)


def test_instructgpt_check_value():
    loss = losses.pairwise_ranking_loss(jnp.array([[1.0, 0.5, 0.0, -1.0]]), jnp.array([[0, 1, 2, 3]]))
    np.testing.assert_allclose(loss, 0.3171698, atol=1e-6)


def test_matches_brute_force_with_ties_and_padding():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(16, 6))
    ranks = rng.integers(0, 4, size=(16, 6))  # many ties
    valid = rng.random((16, 6)) < 0.8
    valid[0] = [True, True, False, False, False, False]
    ranks[0, :2] = 1  # a prompt with only a tie: no pair, excluded from the mean
    for margin in (0.0, 0.5):
        ours = losses.pairwise_ranking_loss(jnp.array(scores), jnp.array(ranks), jnp.array(valid), margin=margin)
        np.testing.assert_allclose(ours, brute_force_loss(scores, ranks, valid, margin), rtol=1e-5)


def test_gradient_matches_finite_difference():
    scores = jnp.array([[0.3, -0.2, 0.9, 0.1]], jnp.float32)
    ranks = jnp.array([[1, 0, 2, 2]])
    grad = jax.grad(losses.pairwise_ranking_loss)(scores, ranks)
    eps = 1e-3
    for k in range(4):
        bump = jnp.zeros_like(scores).at[0, k].set(eps)
        fd = (losses.pairwise_ranking_loss(scores + bump, ranks) -
              losses.pairwise_ranking_loss(scores - bump, ranks)) / (2 * eps)
        np.testing.assert_allclose(grad[0, k], fd, atol=1e-3)


def test_centering_adds_mean_square():
    scores, ranks = jnp.array([[1.0, -3.0]]), jnp.array([[0, 1]])
    base = losses.pairwise_ranking_loss(scores, ranks)
    np.testing.assert_allclose(losses.pairwise_ranking_loss(scores, ranks, center_coef=0.01), base + 0.01 * 5.0,
                               rtol=1e-6)


def test_k4_has_six_ordered_pairs():
    ranks = jnp.array([[0, 1, 2, 3]])
    assert int(losses.ordered_pair_mask(ranks).sum()) == 6
    assert int(losses.ordered_pair_mask(jnp.array([[0, 1, 1, 2]])).sum()) == 5  # the tie is dropped


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs(temperature):
    logits = jnp.array(np.random.default_rng(1).normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.array([[1, 2, 3], [4, 0, 1]])
    logp = losses.token_logprobs(logits, targets, temperature)
    ref = jax.nn.log_softmax(logits / temperature)[jnp.arange(2)[:, None], jnp.arange(3)[None], targets]
    np.testing.assert_allclose(logp, ref, atol=1e-6)


# -- DPO / IPO (docs/formulas.md#dpo) --------------------------------------------------------------

CHECK = dict(policy_chosen=jnp.array([-10.0]), policy_rejected=jnp.array([-12.0]), ref_chosen=jnp.array([-11.0]),
             ref_rejected=jnp.array([-11.0]), beta=0.1)  # h = (-10 + 11) - (-12 + 11) = 2


def test_dpo_and_ipo_check_values():
    np.testing.assert_allclose(losses.dpo_loss(**CHECK), 0.598139, atol=1e-6)  # -log sigmoid(0.2)
    np.testing.assert_allclose(losses.dpo_loss(**CHECK, kind="ipo"), 9.0, atol=1e-6)  # (2 - 5)^2
    with pytest.raises(ValueError, match="kind='kto'"):
        losses.dpo_loss(**CHECK, kind="kto")


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_dpo_loss_is_the_mean_over_pairs_of_the_formula(kind):
    pc, pr, rc, rr = np.random.default_rng(2).normal(size=(4, 7)) * 3
    beta = 0.3
    h = (pc - rc) - (pr - rr)
    want = np.logaddexp(0.0, -beta * h) if kind == "dpo" else (h - 1 / (2 * beta)) ** 2
    np.testing.assert_allclose(losses.dpo_loss(pc, pr, rc, rr, beta, kind), want.mean(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_raising_the_chosen_logprob_lowers_the_loss(kind):
    grads = jax.grad(lambda pc, pr: losses.dpo_loss(pc, pr, CHECK["ref_chosen"], CHECK["ref_rejected"], 0.1, kind),
                     argnums=(0, 1))(CHECK["policy_chosen"], CHECK["policy_rejected"])
    assert grads[0][0] < 0 < grads[1][0]  # (IPO at h = 2 is below its target 1 / (2 beta) = 5)
    np.testing.assert_allclose(grads[0], -grads[1])
    lower = losses.dpo_loss(CHECK["policy_chosen"] + 0.5, CHECK["policy_rejected"], CHECK["ref_chosen"],
                            CHECK["ref_rejected"], 0.1, kind)
    assert lower < losses.dpo_loss(**CHECK, kind=kind)


def test_sequence_logprobs_sum_the_next_token_logprobs_of_the_masked_tokens():
    logits = jnp.array(np.random.default_rng(3).normal(size=(2, 5, 7)), jnp.float32)
    tokens = jnp.array([[1, 2, 3, 4, 0], [5, 6, 1, 0, 0]])
    mask = jnp.array([[False, False, True, True, False], [False, True, True, False, False]])
    logp = np.asarray(jax.nn.log_softmax(logits))
    want = [logp[0, 1, 3] + logp[0, 2, 4], logp[1, 0, 6] + logp[1, 1, 1]]  # token i read at position i - 1
    np.testing.assert_allclose(losses.sequence_logprobs(logits, tokens, mask), want, rtol=1e-6)
