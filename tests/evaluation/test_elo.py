"""Elo ratings (docs/formulas.md#elo): the Bradley-Terry fit against hand-computed values and a direct
maximisation of the likelihood, ties, players who win every game, the anchor, bootstrap intervals over
prompts, and the labeler's pairwise judgements that feed it."""

import numpy as np
import pytest
from scipy import optimize

from instructjax.evaluation import metrics
from instructjax.evaluation.elo import bradley_terry, elo_ratings, elo_summary, tally
from instructjax.labelers import ConstraintLabeler
from instructjax.tasks.constraints import make_constraint
from instructjax.tasks.instructions import TaskPrompt


def games_of(scores: dict[tuple[int, int], list[float]], players: int) -> np.ndarray:
    """outcomes [N, P, P] from the scores of i against j in N games of each listed pair (one game per prompt)."""
    n = len(next(iter(scores.values())))
    outcomes = np.full((n, players, players), np.nan)
    for (i, j), s in scores.items():
        outcomes[:, i, j], outcomes[:, j, i] = s, 1 - np.asarray(s)
    return outcomes


def simulated(ratings: list[float], prompts: int, seed: int) -> np.ndarray:
    """Every pair plays once per prompt, i beating j with the Elo probability of their rating difference."""
    rng = np.random.default_rng(seed)
    scores = {(i, j): (rng.random(prompts) < 1 / (1 + 10 ** ((ratings[j] - ratings[i]) / 400))).astype(float)
              for i in range(len(ratings)) for j in range(i + 1, len(ratings))}
    return games_of(scores, len(ratings))


def test_two_players_three_wins_of_four_is_400_log10_3():
    wins, games = tally(games_of({(0, 1): [1, 1, 1, 0]}, 2))
    ratings = elo_ratings(wins, games, prior_ties=0)
    assert ratings[0] == 1000.0
    np.testing.assert_allclose(ratings[0] - ratings[1], 400 * np.log10(3), atol=1e-6)  # 190.85
    # one virtual tie: 3.5 of 5
    np.testing.assert_allclose(np.diff(elo_ratings(wins, games))[0], -400 * np.log10(3.5 / 1.5), atol=1e-6)


def test_ties_count_half_a_win():
    wins, games = tally(games_of({(0, 1): [1, 1, 0.5, 0.5]}, 2))  # 3 points of 4, as 3 wins of 4
    np.testing.assert_allclose(np.diff(elo_ratings(wins, games, prior_ties=0))[0], -400 * np.log10(3), atol=1e-6)
    wins, games = tally(games_of({(0, 1): [1, 0, 0.5, 0.5]}, 2))
    np.testing.assert_allclose(elo_ratings(wins, games, prior_ties=0), [1000, 1000], atol=1e-6)


def test_three_players_maximise_the_likelihood():
    outcomes = games_of({(0, 1): [1, 1, 0, 0.5, 1], (0, 2): [0, 0, 1, 0, 0.5], (1, 2): [0, 1, 0, 0, 0]}, 3)
    wins, games = tally(outcomes)

    def negative_log_likelihood(free):
        theta = np.concatenate([[0.0], free])
        return -np.sum(wins * -np.logaddexp(0, theta[None, :] - theta[:, None]))

    theta = bradley_terry(wins, games, prior_ties=0)
    expected = optimize.minimize(negative_log_likelihood, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(theta, [0.0, *expected], atol=1e-5)
    p = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))  # P(i beats j)
    np.testing.assert_allclose(wins.sum(1) - (games * p).sum(1), 0.0, atol=1e-8)  # the gradient


def test_a_player_who_wins_every_game_stays_finite_with_the_prior():
    wins, games = tally(simulated([0, 0, 0], 6, seed=0))
    wins[2, :2], wins[:2, 2] = games[2, :2], 0.0  # player 2 wins all its games
    ratings = elo_ratings(wins, games)
    assert np.all(np.isfinite(ratings)) and ratings[2] > ratings[:2].max() + 200
    with pytest.raises(ValueError, match="infinite"):
        elo_ratings(wins, games, prior_ties=0)


def test_the_first_player_is_the_anchor_and_the_order_does_not_matter():
    outcomes = simulated([0, 150, -80, 40], 50, seed=1)
    ratings = elo_ratings(*tally(outcomes))
    assert ratings[0] == 1000.0
    order = [2, 0, 3, 1]
    reordered = elo_ratings(*tally(outcomes[:, order][:, :, order]))
    assert reordered[0] == 1000.0
    np.testing.assert_allclose(reordered - reordered[1], ratings[order] - ratings[0], atol=1e-6)


def test_summary_intervals_contain_the_rating_shrink_with_prompts_and_follow_the_seed():
    names = ["initial", "sft", "ppo"]
    small, large = (elo_summary(simulated([0, 100, 200], n, seed=2), names, num_bootstrap=300, seed=0)
                    for n in (30, 600))
    for summary, n in ((small, 30), (large, 600)):
        assert summary["prompts"] == n and summary["bootstrap_samples"] == 300 and summary["reference"] == "initial"
        assert summary["ratings"]["initial"] == {"rating": 1000.0, "low": 1000.0, "high": 1000.0, "games": 2 * n}
        for r in summary["ratings"].values():
            assert r["low"] <= r["rating"] <= r["high"]
    width = {k: [s["ratings"][p]["high"] - s["ratings"][p]["low"] for p in names[1:]] for k, s in
             (("small", small), ("large", large))}
    assert all(w_large < w_small / 2 for w_small, w_large in zip(width["small"], width["large"]))
    assert abs(large["ratings"]["ppo"]["rating"] - 1200) < 60
    outcomes = simulated([0, 100, 200], 30, seed=2)
    assert elo_summary(outcomes, names, num_bootstrap=300, seed=0) == small
    assert elo_summary(outcomes, names, num_bootstrap=300, seed=1) != small


def test_the_interval_is_the_95_percent_one_of_the_delta_method():
    """Two players, 300 wins of 400: the rating difference's standard error is 400 / ln 10 / sqrt(n p (1 - p))
    (the delta method on the win rate p), so a 95% interval is about 2 * 1.96 of it wide (78.7 points)."""
    n, p = 400, 0.75
    summary = elo_summary(games_of({(0, 1): [0.0] * 300 + [1.0] * 100}, 2), ["initial", "sft"], num_bootstrap=2000)
    sft = summary["ratings"]["sft"]
    np.testing.assert_allclose(sft["rating"], 1000 + 400 * np.log10(300.5 / 100.5), atol=1e-6)
    want = 2 * 1.959964 * 400 / np.log(10) / np.sqrt(n * p * (1 - p))
    assert 0.9 * want < sft["high"] - sft["low"] < 1.1 * want, (sft, want)


def test_summary_refuses_bad_input():
    with pytest.raises(ValueError, match="at least two players"):
        elo_summary(np.full((3, 1, 1), np.nan), ["initial"])
    with pytest.raises(ValueError, match="no games"):
        elo_summary(np.full((3, 2, 2), np.nan), ["initial", "sft"])
    with pytest.raises(ValueError, match=r"\[prompts, 2, 2\]"):
        elo_summary(np.full((3, 3, 3), np.nan), ["initial", "sft"])
    outcomes = games_of({(0, 1): [1, 0]}, 2)
    outcomes[0, 1, 0] = 1.0  # both won the same game
    with pytest.raises(ValueError, match="1 - outcomes"):
        elo_summary(outcomes, ["initial", "sft"])


def test_pairwise_outcomes_are_the_labelers_verdicts_as_in_win_rate():
    prompt = TaskPrompt.create("Give me some advice about growing tomatoes.", "growing tomatoes",
                               (make_constraint("lowercase"),))
    labeler, prompts = ConstraintLabeler([prompt]), [prompt.prompt] * 2
    responses = [["Water tomatoes daily.", "water tomatoes daily."],   # fails, passes
                 ["water tomatoes daily.", "water tomatoes daily."],   # passes twice
                 ["WATER TOMATOES DAILY.", "Water Them."]]             # fails twice
    outcomes = metrics.pairwise_outcomes(labeler, prompts, responses)
    np.testing.assert_array_equal(outcomes[:, 0], [[np.nan, 0.0, 0.5], [np.nan, 0.5, 1.0]])
    np.testing.assert_array_equal(outcomes[:, 1, 2], [1.0, 1.0])
    np.testing.assert_array_equal(outcomes + outcomes.transpose(0, 2, 1), [np.where(np.eye(3), np.nan, 1.0)] * 2)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert outcomes[:, i, j].mean() == metrics.win_rate(labeler, prompts, responses[i],
                                                                    responses[j]).value


def test_reward_agreement_counts_the_pairs_the_labeler_decides():
    # 2 prompts, 3 policies: the labeler prefers 0 over 1 on prompt 0 and 1 over 0 on prompt 1, ties 0-2 on
    # prompt 0, prefers 2 over 0 on prompt 1, and 1 over 2 on both.
    outcomes = games_of({(0, 1): [1.0, 0.0], (0, 2): [0.5, 0.0], (1, 2): [1.0, 1.0]}, 3)
    scores = np.array([[0.3, 0.2],     # policy 0
                       [0.1, 0.2],     # policy 1: below 0 on prompt 0 (agrees), equal on prompt 1 (half)
                       [0.05, 0.9]])   # policy 2: above 0 on prompt 1 (agrees); below 1 on prompt 0 (agrees),
    #                                    above it on prompt 1 (disagrees)
    rate = metrics.reward_agreement(outcomes, scores)
    assert (rate.successes, rate.total) == (3.5, 5)  # the tie of 0 and 2 on prompt 0 is not a pair
    two = metrics.reward_agreement(outcomes[:, :2, :2], scores[:2])
    assert (two.successes, two.total) == (1.5, 2)
    assert metrics.reward_agreement(outcomes, -scores).successes == 1.5  # flipped: 0 + 0.5 + 0 + 0 + 1
    with pytest.raises(ValueError, match=r"scores \[P, N\]"):
        metrics.reward_agreement(outcomes, scores.T)
