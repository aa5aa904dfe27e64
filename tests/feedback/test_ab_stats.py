"""A/B statistics against reference computations and simulations with known truth (fixed seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats
from sklearn.linear_model import LogisticRegression

from feedback import ab_stats
from feedback.ab_stats import (
    ELO_SCALE,
    beta_posterior,
    bradley_terry,
    pairwise_win_rates,
    prob_better,
    up_rates,
    wilson_interval,
)

TRUE_RATINGS = {"a": 900.0, "b": 1000.0, "c": 1050.0, "d": 1200.0}


def _wilson_by_formula(k: int, n: int, z: float = stats.norm.isf(0.025)) -> tuple[float, float]:
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


def _simulate_votes(n: int, rng: np.random.Generator, ratings: dict[str, float] = TRUE_RATINGS) -> list:
    """Random pairs; the winner drawn from the Bradley-Terry model with Elo ``ratings``."""
    names = list(ratings)
    r = np.array([ratings[x] for x in names])
    i = rng.integers(0, len(names), n)
    j = (i + rng.integers(1, len(names), n)) % len(names)
    p_a = 1.0 / (1.0 + 10 ** ((r[j] - r[i]) / 400.0))
    a_wins = rng.random(n) < p_a
    return [(names[x], names[y], "a" if w else "b") for x, y, w in zip(i, j, a_wins, strict=True)]


# --- Wilson / Beta ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k,n", [(1, 10), (37, 50), (500, 1000), (3, 7)])
def test_wilson_matches_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(_wilson_by_formula(k, n), abs=1e-12)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # all down: the rate may still be well above zero
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 0.9
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_wilson_coverage_of_a_thumbs_up_rate():
    # 1000 repetitions: the empirical coverage has a standard error of ~0.7 points, so 0.93-0.97 is
    # about +-3 SE around the nominal 95% (Wilson is close to nominal at n=200, p=0.3).
    rng = np.random.default_rng(3)
    p, n = 0.3, 200
    hits = 0
    for k in rng.binomial(n, p, size=1000):
        lo, hi = wilson_interval(int(k), n)
        hits += lo <= p <= hi
    assert 0.93 <= hits / 1000 <= 0.97


def test_beta_posterior_known_values():
    mean, lo, hi = beta_posterior(7, 3)  # Beta(8, 4)
    assert mean == pytest.approx(8 / 12)
    assert (lo, hi) == pytest.approx((special.betaincinv(8, 4, 0.025), special.betaincinv(8, 4, 0.975)))
    assert beta_posterior(0, 0) == pytest.approx((0.5, 0.025, 0.975))
    m_up, lo_up, _ = beta_posterior(30, 0)
    m_down, _, hi_down = beta_posterior(0, 30)
    assert m_up > 0.95 and lo_up > 0.85 and m_down < 0.05 and hi_down < 0.15


def _prob_better_closed_form(ua, da, ub, db):
    """Evan Miller's exact sum for P(p_A > p_B), integer Beta parameters (uniform prior)."""
    aa, ba, ab, bb = ua + 1, da + 1, ub + 1, db + 1
    # P(p_B > p_A) = sum_{i<ab} B(aa+i, ba+bb) / ((bb+i) B(1+i, bb) B(aa, ba))
    i = np.arange(ab)
    terms = (special.betaln(aa + i, ba + bb) - np.log(bb + i) - special.betaln(1 + i, bb)
             - special.betaln(aa, ba))
    return 1.0 - float(np.exp(terms).sum())


@pytest.mark.parametrize("counts", [(7, 3, 5, 5), (70, 30, 50, 50), (0, 0, 0, 0), (0, 10, 10, 0),
                                    (400, 600, 380, 620), (2, 0, 0, 1)])
def test_prob_better_is_exact(counts):
    assert prob_better(*counts) == pytest.approx(_prob_better_closed_form(*counts), abs=1e-9)


def test_prob_better_agrees_with_monte_carlo_and_is_symmetric():
    rng = np.random.default_rng(0)
    ua, da, ub, db = 40, 25, 30, 30
    a = rng.beta(ua + 1, da + 1, 400_000)
    b = rng.beta(ub + 1, db + 1, 400_000)
    assert prob_better(ua, da, ub, db) == pytest.approx(float((a > b).mean()), abs=3e-3)
    assert prob_better(ua, da, ub, db) + prob_better(ub, db, ua, da) == pytest.approx(1.0, abs=1e-9)
    assert prob_better(3, 1, 3, 1) == pytest.approx(0.5, abs=1e-9)


def test_up_rates_rows():
    rows = up_rates([{"adapter": "x", "up": 8, "down": 2}, {"adapter": "y", "up": 0, "down": 0}])
    x, y = rows
    assert x["adapter"] == "x" and x["n"] == 10 and x["rate"] == pytest.approx(0.8)
    assert (x["lo"], x["hi"]) == pytest.approx(_wilson_by_formula(8, 10))
    assert y["rate"] is None and (y["lo"], y["hi"]) == (0.0, 1.0)


# --- pairwise table --------------------------------------------------------------------------------
def test_pairwise_win_rates_both_orders_and_half_ties():
    votes = [("x", "y", "a"), ("y", "x", "a"), ("x", "y", "a"), ("x", "y", "tie"), ("y", "x", "both_bad"),
             ("x", "z", "b")]
    table = pairwise_win_rates(votes)
    assert table["x"]["y"] == {"wins": 2, "losses": 1, "ties": 2, "n": 5, "win_rate": pytest.approx(0.6)}
    assert table["y"]["x"]["win_rate"] == pytest.approx(0.4)
    assert table["z"]["x"] == {"wins": 1, "losses": 0, "ties": 0, "n": 1, "win_rate": 1.0}
    assert "z" not in table["y"]
    with pytest.raises(ValueError):
        pairwise_win_rates([("x", "y", "x")])


# --- Bradley-Terry ---------------------------------------------------------------------------------
def test_bt_fit_equals_scikit_learn_logistic_regression():
    """The batched Newton fit is the same penalized logistic regression Chatbot Arena runs in sklearn."""
    votes = _simulate_votes(600, np.random.default_rng(5)) + [("a", "c", "tie")] * 7
    names, pairs, counts = ab_stats._aggregate(votes)
    design = np.zeros((len(pairs), len(names)))
    for p, (i, j) in enumerate(pairs):
        design[p, i], design[p, j] = 1.0, -1.0
    lam = (ELO_SCALE / ab_stats.BT_PRIOR_SD) ** 2
    ours = ab_stats._fit_bt(counts[None], design, lam)[0]

    wins, battles = ab_stats._wins(counts)
    x = np.vstack([design, design])
    y = np.r_[np.ones(len(pairs)), np.zeros(len(pairs))]
    weight = np.r_[wins, battles - wins]
    ref = LogisticRegression(C=1 / lam, fit_intercept=False, tol=1e-12, max_iter=10_000)
    ref.fit(x, y, sample_weight=weight)
    assert ours == pytest.approx(ref.coef_[0], abs=1e-5)


def test_bt_recovers_the_order_of_known_strengths():
    rows = bradley_terry(_simulate_votes(2000, np.random.default_rng(11)), bootstrap=300)
    assert [r["adapter"] for r in rows] == ["d", "c", "b", "a"]
    assert np.mean([r["rating"] for r in rows]) == pytest.approx(1000.0)  # no "base": mean-anchored
    for r in rows:
        assert r["lo"] < r["rating"] < r["hi"]
        assert r["n_votes"] > 800


def test_bt_bootstrap_intervals_cover_the_truth():
    # 100 simulated arenas of 2000 votes. Per adapter the coverage count is Binomial(100, 0.95): SE ~2.2
    # points, so a single adapter may honestly land at 90; 85-100 on the average of four is a loose
    # bound that still fails if the intervals are too narrow (e.g. 80% intervals) or biased.
    truth = np.array(list(TRUE_RATINGS.values()))
    anchored = dict(zip(TRUE_RATINGS, 1000.0 + truth - truth.mean(), strict=True))
    rng = np.random.default_rng(7)
    covered = {name: 0 for name in TRUE_RATINGS}
    for rep in range(100):
        for r in bradley_terry(_simulate_votes(2000, rng), bootstrap=200, seed=rep):
            covered[r["adapter"]] += r["lo"] <= anchored[r["adapter"]] <= r["hi"]
    rates = np.array(list(covered.values())) / 100
    assert 0.85 <= rates.mean() <= 1.0
    assert rates.min() >= 0.85


def test_bt_anchors_on_base_when_present():
    rows = {r["adapter"]: r for r in bradley_terry(_simulate_votes(500, np.random.default_rng(1),
                                                                   {"base": 1000, "v1": 1150}))}
    assert rows["base"]["rating"] == rows["base"]["lo"] == rows["base"]["hi"] == 1000.0
    assert rows["v1"]["rating"] > 1050 and rows["v1"]["lo"] > 1000


def test_bt_no_votes_and_self_battles():
    assert bradley_terry([]) == []
    assert bradley_terry([("x", "x", "a")]) == []


@pytest.mark.parametrize("votes", [
    [("x", "y", "a")],
    [("x", "y", "a"), ("x", "y", "a")],
    [("x", "y", "a"), ("y", "x", "b")],
])
def test_bt_tiny_samples_give_wide_intervals(votes):
    rows = bradley_terry(votes)
    assert [r["adapter"] for r in rows] == ["x", "y"]
    for r in rows:
        assert math.isfinite(r["rating"]) and r["n_votes"] == len(votes)
        assert r["hi"] - r["lo"] > 400  # two votes prove next to nothing
    assert rows[0]["lo"] < 1000 < rows[0]["hi"]  # not even that x beats the average


def test_bt_only_ties_and_both_bad():
    rows = bradley_terry([("x", "y", "tie"), ("y", "z", "both_bad"), ("z", "x", "tie")] * 3)
    for r in rows:
        assert r["rating"] == pytest.approx(1000.0, abs=1e-6)
        assert r["hi"] - r["lo"] > 200


def test_bt_one_adapter_always_winning_stays_finite():
    votes = [("champ", other, "a") for other in ("p", "q") for _ in range(300)] + \
            [("p", "q", "a"), ("q", "p", "a")] * 50
    rows = bradley_terry(votes, bootstrap=200)
    assert rows[0]["adapter"] == "champ"
    assert all(math.isfinite(v) for r in rows for v in (r["rating"], r["lo"], r["hi"]))
    assert rows[0]["lo"] > rows[1]["hi"]  # 600-0 is decisive


def test_bt_is_deterministic_for_a_seed():
    votes = _simulate_votes(300, np.random.default_rng(2))
    assert bradley_terry(votes, seed=4) == bradley_terry(votes, seed=4)

