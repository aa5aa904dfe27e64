"""What a person needs to read a canary experiment: both arms' up-rates with intervals hour by hour, the
share the candidate had, the evidence against its thresholds, the ramp steps and, once decided, why.

Data only (plain dicts, JSON-ready); ``web/ui_canary.py`` draws it. The evidence is recomputed per hour
with ``retrain.canary.evidence``, the function the decision uses.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import numpy as np

from feedback.ab_stats import wilson_interval
from feedback.models import Experiment
from retrain.canary import CanaryDecision, CanaryPolicy, count, decide, evidence

ARMS = ("control", "candidate")


def _arm(up: float, n: float) -> dict:
    lo, hi = wilson_interval(round(up), round(n))  # for reading; per-user weights make counts fractional
    return {"up": up, "n": n, "rate": up / n if n else None, "lo": lo, "hi": hi}


def _progress(log_e: float, alpha: float) -> float:
    """How far the evidence has come toward its threshold, 0..1+ on the log scale (1 = decision)."""
    return max(0.0, log_e) / math.log(1.0 / alpha)


def decide_now(store, exp: Experiment, policy: CanaryPolicy, now: datetime) -> CanaryDecision:
    """The canary's decision on ``exp`` from the store's counts (each rater weighed down to the policy's cap)."""
    return decide(store.experiment_step_counts(exp.id, policy.max_judgements_per_user), exp.started_at, now,
                  policy, store.experiment_raters(exp.id))


def pick_experiment(store) -> Experiment | None:
    """The running experiment, else the most recent one."""
    active = store.active_experiment()
    if active is not None:
        return active
    found = store.list_experiments()
    return found[0] if found else None


def experiment_report(store, policy: CanaryPolicy, exp: Experiment, now: datetime | None = None) -> dict:
    """Everything the Adapters tab shows about ``exp``.

    ``points``: one per hour with ratings, cumulative to the end of that hour: ``hours`` since the start,
    ``percent`` in force, per arm ``rate``/``lo``/``hi`` (Wilson 95%, pooled over steps for reading),
    the stratified difference with its always-valid interval, and both e-values with their progress
    toward the threshold. ``status``: for a running experiment the rule's sentence now; for an ended one
    the sentence recorded with the decision.
    """
    now = now or datetime.now(UTC)
    steps = store.experiment_steps(exp.id)
    n_steps = max(1, len(steps))
    counts = np.zeros((n_steps, 2, 2))  # step, arm (control, candidate), (up, down)
    by_hour: dict[datetime, list[dict]] = {}
    for row in store.experiment_timeline(exp.id, policy.max_judgements_per_user):
        by_hour.setdefault(row["hour"], []).append(row)
    points = []
    for hour in sorted(by_hour):
        for row in by_hour[hour]:
            if row["arm"] in ARMS and row["step"] < n_steps:
                counts[row["step"], ARMS.index(row["arm"])] += (row["up"], row["down"])
        end = hour + timedelta(hours=1)
        up, n = counts[..., 0], counts.sum(-1)
        ev = evidence(up[:, 0], n[:, 0], up[:, 1], n[:, 1], policy)
        in_force = [s for s in steps if s["at"] < end]
        finite = bool(np.isfinite(ev["radius"]))
        points.append({
            "hour": end.isoformat(), "hours": max(0.0, (min(end, exp.ended_at or now) - exp.started_at).total_seconds() / 3600),
            "percent": in_force[-1]["percent"] if in_force else exp.percent,
            "control": _arm(count(up[:, 0].sum()), count(n[:, 0].sum())),
            "candidate": _arm(count(up[:, 1].sum()), count(n[:, 1].sum())),
            "diff": float(ev["diff"]) if finite else None,
            "diff_lo": float(ev["diff"] - ev["radius"]) if finite else None,
            "diff_hi": float(ev["diff"] + ev["radius"]) if finite else None,
            "e_better": float(np.exp(ev["log_e_better"])), "e_harm": float(np.exp(ev["log_e_harm"])),
            "progress_better": _progress(float(ev["log_e_better"]), policy.promote_alpha),
            "progress_harm": _progress(float(ev["log_e_harm"]), policy.harm_alpha),
        })
    if exp.active:
        decision = decide_now(store, exp, policy, now)
        status, numbers = decision.reason, decision.numbers
    else:
        status = exp.reason or f"Ended ({exp.outcome})."
        numbers = exp.numbers or {}
    return {
        "experiment": {**asdict(exp), "started_at": exp.started_at.isoformat(),
                       "ended_at": exp.ended_at.isoformat() if exp.ended_at else None, "active": exp.active},
        "steps": [{**s, "at": s["at"].isoformat(),
                   "hours": (s["at"] - exp.started_at).total_seconds() / 3600} for s in steps],
        "shares": list(policy.shares(steps[0]["percent"] if steps else exp.percent)),
        "points": points,
        "numbers": numbers,
        "thresholds": {"promote_at": 1.0 / policy.promote_alpha, "rollback_at": 1.0 / policy.harm_alpha,
                       "promote_alpha": policy.promote_alpha, "harm_alpha": policy.harm_alpha,
                       "max_hours": policy.max_hours},
        "status": status,
    }
