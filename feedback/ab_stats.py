"""A/B statistics on plain counts: thumbs-up rates, Beta posteriors and arena (Bradley-Terry) ratings.

Pure numpy/scipy: the store and the web layer call these with data they already fetched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import integrate, stats

log = logging.getLogger(__name__)

Vote = Sequence  # (adapter_a, adapter_b, winner), winner in WINNERS; or (..., winner, count) for counted votes
WINNERS = ("a", "b", "tie", "both_bad")

# Chatbot Arena's Elo-like scale: a 400-point gap means 10:1 odds of winning.
ELO_SCALE = 400.0 / math.log(10.0)
ELO_CENTER = 1000.0
# Gaussian prior on each rating (in Elo points) for the Bradley-Terry fit. Wide enough that ~1000 votes
# are not pulled noticeably toward the center, narrow enough that 1 vote or an adapter that always won
# gives a finite rating with a wide interval instead of +infinity with false certainty.
BT_PRIOR_SD = 350.0


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there is no data."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes} n={n}")
    if n == 0:
        return (0.0, 1.0)
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def beta_posterior(
    up: int, down: int, prior: tuple[float, float] = (1, 1), confidence: float = 0.95
) -> tuple[float, float, float]:
    """Posterior mean and central credible interval of the up-rate under a Beta prior."""
    dist = stats.beta(prior[0] + up, prior[1] + down)
    lo, hi = dist.interval(confidence)
    return (float(dist.mean()), float(lo), float(hi))


def prob_better(
    up_a: int, down_a: int, up_b: int, down_b: int, prior: tuple[float, float] = (1, 1)
) -> float:
    """Posterior P(rate_a > rate_b) with independent Beta posteriors, by numerical integration.

    Exact to ~1e-12 and deterministic, and cheap enough (~2 ms) to call at every canary check;
    Monte Carlo would need ~10^5 draws per call for the third decimal.
    """
    a = stats.beta(prior[0] + up_a, prior[1] + down_a)
    b = stats.beta(prior[0] + up_b, prior[1] + down_b)
    # P(A > B) = E_A[F_B(A)]. A's density is needle-thin for large counts, so integrate only over
    # where A has mass (outside, the integrand is < 1e-12); there it is smooth, and one vectorized
    # Gauss-Legendre rule matches adaptive quad to ~1e-13 at a tenth of the cost.
    lo, hi = a.ppf(1e-12), a.isf(1e-12)
    value, _ = integrate.fixed_quad(lambda x: a.pdf(x) * b.cdf(x), lo, hi, n=256)
    return float(np.clip(value, 0.0, 1.0))


def up_rates(rows: Iterable[Mapping]) -> list[dict]:
    """Thumbs-up rate with Wilson interval per adapter, from rows of {adapter, up, down}.

    ``rate`` is None for an adapter without judgements (its interval is then (0, 1)).
    """
    out = []
    for row in rows:
        up, down = int(row["up"]), int(row["down"])
        n = up + down
        lo, hi = wilson_interval(up, n)
        out.append({"adapter": row["adapter"], "up": up, "down": down, "n": n,
                    "rate": up / n if n else None, "lo": lo, "hi": hi})
    return out


def _check_winner(winner: str) -> None:
    if winner not in WINNERS:
        raise ValueError(f"unknown arena winner {winner!r}; expected one of {WINNERS}")


def pairwise_win_rates(votes: Iterable[Vote]) -> dict[str, dict[str, dict]]:
    """Head-to-head table: ``result[x][y]`` = x's wins, losses, ties and win rate against y.

    Both orders are present. "both_bad" counts as a tie; ties count half a win in ``win_rate``.
    """
    table: dict[str, dict[str, dict]] = {}

    def cell(x: str, y: str) -> dict:
        return table.setdefault(x, {}).setdefault(y, {"wins": 0, "losses": 0, "ties": 0})

    for a, b, winner, n in _counted(votes):
        _check_winner(winner)
        if a == b:
            continue
        if winner == "a":
            cell(a, b)["wins"] += n
            cell(b, a)["losses"] += n
        elif winner == "b":
            cell(a, b)["losses"] += n
            cell(b, a)["wins"] += n
        else:
            cell(a, b)["ties"] += n
            cell(b, a)["ties"] += n
    for row in table.values():
        for c in row.values():
            c["n"] = c["wins"] + c["losses"] + c["ties"]
            c["win_rate"] = (c["wins"] + 0.5 * c["ties"]) / c["n"]
    return table


def bradley_terry(
    votes: Iterable[Vote],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    anchor: str | None = "base",
    prior_sd: float = BT_PRIOR_SD,
) -> list[dict]:
    """Arena ratings (Elo-like, as Chatbot Arena) with bootstrap intervals, best first.

    Each row: adapter, rating, lo, hi, n_votes. Ratings are anchored so that ``anchor`` sits at 1000
    when it has votes (its interval is then a point), else so that the mean is 1000. A tie counts half
    a win for each side (Chatbot Arena); "both_bad" is treated as a tie, since it says nothing about
    which of the two is better. Self-battles are ignored. ``lo``/``hi`` span the wider of the bootstrap
    percentile interval and the prior-based (Laplace) posterior interval: the bootstrap alone collapses
    to a point on a few identical votes (every resample is the same), the Laplace one stays honest there.
    """
    names, pair_ix, counts = _aggregate(votes)
    if not names:
        return []
    k = len(names)
    design = np.zeros((len(pair_ix), k))
    for p, (i, j) in enumerate(pair_ix):
        design[p, i], design[p, j] = 1.0, -1.0
    lam = (ELO_SCALE / prior_sd) ** 2  # L2 penalty in log-odds units = 1 / prior variance

    theta = _fit_bt(counts[None, :, :], design, lam)  # (1, k)
    anchor_ix = names.index(anchor) if anchor in names else None
    center = _anchoring(k, anchor_ix)  # ratings = ELO_CENTER + ELO_SCALE * theta @ center.T
    point = ELO_CENTER + ELO_SCALE * (theta @ center.T)[0]

    alpha = 1.0 - confidence
    z = stats.norm.isf(alpha / 2)
    hess = _hessian(theta, counts[None], design, lam)[0]
    laplace_sd = ELO_SCALE * np.sqrt(np.clip(np.diag(center @ np.linalg.inv(hess) @ center.T), 0, None))
    lo, hi = point - z * laplace_sd, point + z * laplace_sd

    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        flat = counts.ravel()
        total = int(flat.sum())
        # A resample of battles only matters through its counts per (pair, outcome): draw those directly.
        resampled = rng.multinomial(total, flat / total, size=bootstrap).reshape(bootstrap, *counts.shape)
        boot = ELO_CENTER + ELO_SCALE * (_fit_bt(resampled, design, lam) @ center.T)
        lo = np.minimum(lo, np.quantile(boot, alpha / 2, axis=0))
        hi = np.maximum(hi, np.quantile(boot, 1 - alpha / 2, axis=0))

    per_adapter = np.zeros(k, dtype=int)
    for p, (i, j) in enumerate(pair_ix):
        per_adapter[i] += int(counts[p].sum())
        per_adapter[j] += int(counts[p].sum())
    rows = [{"adapter": names[i], "rating": float(point[i]), "lo": float(lo[i]), "hi": float(hi[i]),
             "n_votes": int(per_adapter[i])} for i in range(k)]
    rows.sort(key=lambda r: -r["rating"])
    return rows


def _counted(votes: Iterable) -> Iterable[tuple[str, str, str, int]]:
    """Votes as (a, b, winner, count): a plain (a, b, winner) counts once; the store's
    ``arena_vote_counts`` gives them already counted."""
    for v in votes:
        yield (*v, 1) if len(v) == 3 else tuple(v)


def _aggregate(votes: Iterable[Vote]) -> tuple[list[str], list[tuple[int, int]], np.ndarray]:
    """Adapters (sorted), the pairs that met (i < j), and counts[pair] = (i won, j won, tie)."""
    tallies: dict[tuple[str, str], list[int]] = {}
    for a, b, winner, n in _counted(votes):
        _check_winner(winner)
        if a == b:
            continue
        outcome = {"a": 0, "b": 1}.get(winner, 2)
        if b < a:
            a, b = b, a
            outcome = {0: 1, 1: 0}.get(outcome, 2)
        tallies.setdefault((a, b), [0, 0, 0])[outcome] += n
    names = sorted({n for pair in tallies for n in pair})
    index = {n: i for i, n in enumerate(names)}
    pairs = sorted(tallies)
    counts = np.array([tallies[p] for p in pairs], dtype=float).reshape(len(pairs), 3)
    return names, [(index[a], index[b]) for a, b in pairs], counts


def _anchoring(k: int, anchor_ix: int | None) -> np.ndarray:
    """Linear map from raw log-strengths to anchored ones (BT only identifies differences)."""
    if anchor_ix is None:
        return np.eye(k) - np.full((k, k), 1.0 / k)
    center = np.eye(k)
    center[:, anchor_ix] -= 1.0
    return center


def _wins(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wins of the first adapter, battles) per pair; a tie is half a win each way."""
    return counts[..., 0] + 0.5 * counts[..., 2], counts.sum(axis=-1)


def _objective(theta, s, n, design, lam) -> np.ndarray:
    d = theta @ design.T
    # log sigmoid(d) = -logaddexp(0, -d), stable for large |d|
    ll = -(s * np.logaddexp(0.0, -d) + (n - s) * np.logaddexp(0.0, d)).sum(axis=1)
    return ll - 0.5 * lam * (theta**2).sum(axis=1)


def _hessian(theta, counts, design, lam) -> np.ndarray:
    _, n = _wins(counts)
    p = 1.0 / (1.0 + np.exp(-(theta @ design.T)))
    w = n * p * (1.0 - p)
    k = design.shape[1]
    return np.einsum("bp,pk,pl->bkl", w, design, design) + lam * np.eye(k)


def _fit_bt(counts: np.ndarray, design: np.ndarray, lam: float, tol: float = 1e-9) -> np.ndarray:
    """Penalized Bradley-Terry MAP for a batch of count tables (B, pairs, 3) -> log-strengths (B, k).

    Hand-written damped Newton rather than scikit-learn's LogisticRegression (Chatbot Arena's choice):
    sklearn fits one model per call, and the bootstrap needs ~1000 fits; batched over all resamples
    at once this takes milliseconds. The objective is strictly concave (L2 term), so Newton with step
    halving converges from zero; tests check it against scikit-learn on the same data.
    """
    s, n = _wins(counts)
    theta = np.zeros((counts.shape[0], design.shape[1]))
    f = _objective(theta, s, n, design, lam)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(theta @ design.T)))
        grad = (s - n * p) @ design - lam * theta
        step = np.linalg.solve(_hessian(theta, counts, design, lam), grad[..., None])[..., 0]
        t = np.ones(len(theta))
        for _ in range(30):
            candidate = theta + t[:, None] * step
            f_new = _objective(candidate, s, n, design, lam)
            ok = f_new >= f - 1e-12 * (1.0 + np.abs(f))
            if ok.all():
                break
            t = np.where(ok, t, t / 2)
        theta, f = candidate, f_new
        if np.max(np.abs(t[:, None] * step)) < tol:
            break
    else:
        log.warning("Bradley-Terry fit stopped before converging (%d tables)", len(theta))
    return theta
