"""Canary policy on simulated thumbs streams with known true up-rates (fixed seeds)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np

from retrain.canary import CanaryDecision, decide

START = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = {"min_judgements": 50, "confidence": 0.95, "max_hours": 168.0}


def _run(rng, p_control, p_candidate, *, step=10, looks=60, policy=POLICY) -> CanaryDecision:
    """Add ``step`` judgements per arm between looks, one hour apart, until the policy acts."""
    control = {"up": 0, "down": 0}
    candidate = {"up": 0, "down": 0}
    decision = None
    for look in range(1, looks + 1):
        for arm, p in ((control, p_control), (candidate, p_candidate)):
            up = int(rng.binomial(step, p))
            arm["up"] += up
            arm["down"] += step - up
        decision = decide(control, candidate, START, START + timedelta(hours=look), **policy)
        if decision.action != "continue":
            return decision
    return decision


def test_promotes_a_truly_better_candidate():
    rng = np.random.default_rng(1)
    actions = [_run(rng, 0.5, 0.7).action for _ in range(50)]
    assert actions.count("rollback") == 0
    assert actions.count("promote") >= 45


def test_rolls_back_a_truly_worse_candidate():
    rng = np.random.default_rng(2)
    actions = [_run(rng, 0.7, 0.5).action for _ in range(50)]
    assert actions.count("promote") == 0
    assert actions.count("rollback") >= 45


def test_never_decides_below_min_judgements():
    policy = {"min_judgements": 50, "confidence": 0.95, "max_hours": 168.0}
    for n in (1, 10, 49):
        d = decide({"up": 0, "down": n}, {"up": n, "down": 0}, START, START + timedelta(hours=1), **policy)
        assert d.action == "continue" and "waiting" in d.reason
        d = decide({"up": n, "down": 0}, {"up": 0, "down": n}, START, START + timedelta(hours=1), **policy)
        assert d.action == "continue"
    # one arm full, the other short: still no decision
    d = decide({"up": 0, "down": 500}, {"up": 49, "down": 0}, START, START + timedelta(hours=1), **policy)
    assert d.action == "continue"
    d = decide({"up": 0, "down": 50}, {"up": 50, "down": 0}, START, START + timedelta(hours=1), **policy)
    assert d.action == "promote"


def test_ends_after_the_time_limit_without_a_winner():
    arms = {"up": 30, "down": 30}
    d = decide(arms, arms, START, START + timedelta(hours=167.9), **POLICY)
    assert d.action == "continue"
    d = decide(arms, arms, START, START + timedelta(hours=168), **POLICY)
    assert d.action == "end" and d.numbers["hours"] == 168.0
    d = decide({"up": 0, "down": 0}, {"up": 0, "down": 0}, START, START + timedelta(days=30), **POLICY)
    assert d.action == "end"
    # a clear winner at the deadline still wins
    d = decide({"up": 30, "down": 70}, {"up": 80, "down": 20}, START, START + timedelta(hours=200), **POLICY)
    assert d.action == "promote"


def test_equal_arms_rarely_decide():
    # Every look is another chance to cross the threshold on noise, so the false-decision rate
    # depends on how often one looks. Here a fixed 5 looks (every 200 judgements per arm up to 1000)
    # at confidence 0.995: ~3% in 4000 simulated runs (10 looks at 0.99: ~9%; a look every 10
    # judgements at 0.95: ~50%). 300 runs give SE ~1 point, so < 7% fails only if the rule is looser.
    policy = {"min_judgements": 200, "confidence": 0.995, "max_hours": 168.0}
    rng = np.random.default_rng(3)
    actions = [_run(rng, 0.6, 0.6, step=200, looks=5, policy=policy).action for _ in range(300)]
    false_rate = (actions.count("promote") + actions.count("rollback")) / len(actions)
    assert false_rate < 0.07


def test_numbers_are_complete_and_json_ready():
    d = decide({"up": 60, "down": 40}, {"up": 30, "down": 20}, START, START + timedelta(hours=3), **POLICY)
    n = d.numbers
    assert n["control"] == {"up": 60, "down": 40, "n": 100, "rate": 0.6}
    assert n["candidate"] == {"up": 30, "down": 20, "n": 50, "rate": 0.6}
    assert 0.4 < n["p_candidate_better"] < 0.6
    assert n["hours"] == 3.0
    json.dumps(n)
    empty = decide({"up": 0, "down": 0}, {"up": 0, "down": 0}, START, START, **POLICY)
    assert empty.numbers["control"]["rate"] is None and empty.action == "continue"
