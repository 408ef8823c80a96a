"""Pairwise ranking loss and token cross-entropy against the check values of docs/formulas.md and brute force."""

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


def test_k4_has_six_ordered_pairs_and_accuracy():
    ranks = jnp.array([[0, 1, 2, 3]])
    assert int(losses.ordered_pair_mask(ranks).sum()) == 6
    assert int(losses.ordered_pair_mask(jnp.array([[0, 1, 1, 2]])).sum()) == 5  # the tie is dropped
    acc = losses.pairwise_accuracy(jnp.array([[3.0, 2.0, 4.0, 1.0]]), ranks)
    np.testing.assert_allclose(acc, 4 / 6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_cross_entropy(temperature):
    logits = jnp.array(np.random.default_rng(1).normal(size=(2, 3, 5)), jnp.float32)
    targets = jnp.array([[1, 2, 3], [4, 0, 1]])
    logp = losses.token_logprobs(logits, targets, temperature)
    ref = jax.nn.log_softmax(logits / temperature)[jnp.arange(2)[:, None], jnp.arange(3)[None], targets]
    np.testing.assert_allclose(logp, ref, atol=1e-6)
    mask = jnp.array([[False, True, True], [True, False, False]])
    ce = losses.token_cross_entropy(logits, targets, mask)
    full = -losses.token_logprobs(logits, targets)
    np.testing.assert_allclose(ce, (full[0, 1] + full[0, 2] + full[1, 0]) / 3, rtol=1e-6)
