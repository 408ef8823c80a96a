"""Elo ratings of policies from pairwise judgements: a Bradley-Terry maximum-likelihood fit (Hunter
2004's MM algorithm) on the Elo scale, with bootstrap intervals over prompts
(docs/formulas.md#elo). numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ELO_SCALE = 400 / np.log(10)  # Elo points per unit of log-strength: P(i beats j) = 1 / (1 + 10^((R_j - R_i) / 400))
REFERENCE_RATING = 1000.0


def tally(outcomes: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(wins, games) [..., P, P] of `outcomes` [N prompts, P, P], the score of i against j (1 win,
    0.5 tie, 0 loss; NaN: no game), each prompt counted `counts` [..., N] times (None: once)."""
    played = ~np.isnan(outcomes)
    counts = np.ones(len(outcomes)) if counts is None else counts
    return (np.einsum("...n,nij->...ij", counts, np.where(played, outcomes, 0.0)),
            np.einsum("...n,nij->...ij", counts, played.astype(np.float64)))


def bradley_terry(wins: np.ndarray, games: np.ndarray, *, prior_ties: float = 1.0, tol: float = 1e-10,
                  max_iter: int = 100_000) -> np.ndarray:
    """Log-strengths theta [..., P] maximising sum_ij wins_ij * log sigmoid(theta_i - theta_j), anchored at
    theta_0 = 0, by Hunter's (2004) MM update p_i <- W_i / sum_j games_ij / (p_i + p_j).

    A tie is half a win and half a loss. `prior_ties` virtual ties are added between every two players (a
    weak prior that keeps a player who wins or loses every game finite); with 0 the maximum exists only when
    every player can be reached from every other by a chain of players each of whom scored (won or tied)
    against the next (Ford 1957), else ValueError.
    """
    wins, games = np.asarray(wins, np.float64), np.asarray(games, np.float64)
    players = wins.shape[-1]
    off_diagonal = 1.0 - np.eye(players)
    wins, games = wins + 0.5 * prior_ties * off_diagonal, games + prior_ties * off_diagonal
    reach = ((wins > 0) | np.eye(players, dtype=bool)).astype(np.float64)
    for _ in range(players):  # transitive closure of "i scored against j"
        reach = np.minimum(reach @ reach, 1.0)
    if not np.all(reach > 0):
        raise ValueError("the Bradley-Terry maximum is infinite: some players never scored against the others "
                         "(every game won or lost); use prior_ties > 0")
    total = wins.sum(-1)
    theta = np.zeros(wins.shape[:-1])
    for _ in range(max_iter):
        p = np.exp(theta)
        new = np.log(total / (games / (p[..., :, None] + p[..., None, :])).sum(-1))
        new -= new[..., :1]
        if np.max(np.abs(new - theta)) < tol:
            return new
        theta = new
    raise RuntimeError(f"Bradley-Terry MM did not converge in {max_iter} iterations")


def elo_ratings(wins: np.ndarray, games: np.ndarray, *, prior_ties: float = 1.0) -> np.ndarray:
    """Elo ratings [..., P]: 1000 + 400 / ln 10 * theta, the first player at 1000."""
    return REFERENCE_RATING + ELO_SCALE * bradley_terry(wins, games, prior_ties=prior_ties)


def elo_summary(outcomes: np.ndarray, names: Sequence[str], *, num_bootstrap: int = 1000, seed: int = 0,
                prior_ties: float = 1.0) -> dict[str, Any]:
    """JSON-able ratings of the players `names` from `outcomes` [N prompts, P, P] (see `tally`; the score of j
    against i is 1 minus that of i against j): per player the rating, the 95% percentile interval over
    `num_bootstrap` resamples of the prompts with replacement (a prompt's games stay together), and its games."""
    outcomes = np.asarray(outcomes, np.float64)
    if outcomes.ndim != 3 or outcomes.shape[1:] != (len(names), len(names)):
        raise ValueError(f"outcomes must be [prompts, {len(names)}, {len(names)}] for players {list(names)}, "
                         f"got shape {outcomes.shape}")
    if len(names) < 2:
        raise ValueError(f"an Elo ranking needs at least two players, got {list(names)}")
    both = outcomes + outcomes.transpose(0, 2, 1)
    if not np.all(np.isnan(both) == np.isnan(outcomes)) or not np.allclose(both[~np.isnan(both)], 1.0):
        raise ValueError("outcomes[n, j, i] must be 1 - outcomes[n, i, j] (NaN both for no game)")
    wins, games = tally(outcomes)
    if not games.any():
        raise ValueError("no games: every outcome is NaN")
    ratings = elo_ratings(wins, games, prior_ties=prior_ties)
    n = len(outcomes)  # how often each prompt is drawn in each resample of n prompts with replacement
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=num_bootstrap).astype(np.float64)
    resampled = elo_ratings(*tally(outcomes, counts), prior_ties=prior_ties)
    low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
    return {"ratings": {name: {"rating": float(ratings[i]), "low": float(low[i]), "high": float(high[i]),
                               "games": int(games[i].sum())} for i, name in enumerate(names)},
            "reference": names[0], "prompts": len(outcomes), "bootstrap_samples": num_bootstrap,
            "prior_ties": prior_ties}
