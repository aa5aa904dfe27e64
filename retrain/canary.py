"""The canary policy: from thumbs per arm and ramp step, decide to wait, ramp up, promote, roll back or end.

Pure: numbers in, a decision out. ``retrain.promotion`` applies it every 5 minutes; ``bench/canary.py``
simulates it through the same ``rule``.

Method: the mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and Walsh (2017),
"Always Valid Inference: Bringing Sequential Analysis to A/B Testing" (arXiv:1512.04922; Operations
Research 70(3), 2022), for the difference of two up-rates under its normal approximation, one-sided
in each direction. Its statistic is a likelihood ratio averaged over a prior on the effect, a
nonnegative (super)martingale under "no effect"; by Ville's inequality it exceeds ``1/alpha`` at ANY
time with probability at most ``alpha``, so checking every 5 minutes, or every second, costs nothing.
(The Beta-posterior threshold this replaces decided on noise in about half of all equal-arm runs.)

Asymmetric by design: the harm guard (candidate worse) fires at ``harm_alpha`` with a mixture over
larger effects, so a clearly worse candidate is rolled back fast; promotion needs ``promote_alpha``,
the stricter level. False decisions between equal arms are at most ``harm_alpha + promote_alpha``.

Ramp: the candidate starts at the configured share and steps up (10% -> 25% -> 50% by default) once
it has ``ramp_min_judgements`` judgements at the current share and the harm evidence is below
``ramp_hold`` (a candidate under suspicion stays where it is until the guard decides).

The comparison is stratified by ramp step: each step's difference is weighted by its information
(inverse variance), never pooled across steps. Pooled counts would mix a 10% share from the night
with a 50% share from the day, and a rate that drifts with the time of day would then show up as a
difference between the arms (Simpson's paradox in ramped experiments).

One rater is not many judgements: arms are sticky per user (``serving.traffic``), so a user who rates a
hundred answers in one arm would otherwise be a hundred "independent" judgements, and one user who thumbs
every control answer down could get a candidate promoted on their own. The store weighs each user's thumbs
in an arm and step down to at most ``max_judgements_per_user`` judgements at that user's own up-rate
(``FeedbackStore.experiment_step_counts``), and no decision is taken before ``min_raters`` different users
rated each arm. Counting each user once (a cap of 1) is the cleanest unit statistically, but a small team
would then need ten raters per arm before anything is decided; the cap is a setting.

Arena votes are not counted: they answer another question (which of two answers to the same prompt
a volunteer prefers, side by side) than thumbs in normal use, voters are not randomized by the
experiment, and a product of the two e-values is only valid when both "no difference" hypotheses hold
at once, which a candidate that wins on style but loses on substance breaks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
from scipy.special import log_ndtr

Action = Literal["continue", "ramp", "promote", "rollback", "end"]
ACTIONS: tuple[Action, ...] = ("continue", "ramp", "promote", "rollback", "end")
CONTINUE, RAMP, PROMOTE, ROLLBACK, END = range(5)


@dataclass(frozen=True)
class CanaryPolicy:
    """The numbers the rule needs; ``from_settings`` maps the ``canary_*`` settings onto it."""

    ramp: tuple[float, ...] = (25.0, 50.0)  # shares (%) after the starting one, in order
    promote_alpha: float = 0.01  # chance of promoting a candidate that is not better, however often checked
    harm_alpha: float = 0.04  # chance of rolling back a candidate that is not worse, however often checked
    min_judgements: int = 10  # per arm, before any decision (the normal approximation needs a few)
    ramp_min_judgements: int = 10  # candidate judgements at the current share before the next step
    max_hours: float = 168.0
    # Mixture scales (sd of the prior over the difference in up-rate). Johari et al. pick it from the
    # effects one expects; the mSPRT is fastest for effects near it. Harm uses a wider prior: a clearly
    # worse candidate should go within hours. Chosen with bench/canary.py.
    promote_tau: float = 0.08
    harm_tau: float = 0.10
    # Ramp hold: harm evidence (e-value) at or above this keeps the share where it is.
    ramp_hold: float = 2.0
    max_judgements_per_user: float = 5.0  # what one rater's thumbs weigh at most, per arm and step
    min_raters: int = 3  # different users per arm before any decision

    def shares(self, start_percent: float) -> tuple[float, ...]:
        """The ramp an experiment starting at ``start_percent`` follows: the start, then each larger step."""
        return (float(start_percent), *(float(p) for p in self.ramp if p > start_percent))

    @classmethod
    def from_settings(cls, s) -> CanaryPolicy:
        return cls(ramp=tuple(s.canary_ramp), promote_alpha=s.canary_promote_alpha, harm_alpha=s.canary_harm_alpha,
                   min_judgements=s.canary_min_judgements, ramp_min_judgements=s.canary_ramp_min_judgements,
                   max_hours=s.canary_max_hours, max_judgements_per_user=s.canary_max_judgements_per_user,
                   min_raters=s.canary_min_raters)


@dataclass(frozen=True)
class CanaryDecision:
    action: Action
    reason: str  # one sentence a person reads
    numbers: dict = field(default_factory=dict)  # JSON-ready: counts, rates, evidence, thresholds, hours
    next_percent: float | None = None  # the new share when action == "ramp"


def _log_half_mixture(s: np.ndarray, info: np.ndarray, tau: float) -> np.ndarray:
    """log of the one-sided normal-mixture likelihood ratio for an effect > 0.

    ``s`` is the information-weighted sum of differences (a Brownian motion with drift theta in
    information time ``info``). Mixing exp(theta*s - theta^2*info/2) over a half-normal(tau) prior on
    theta > 0 gives 2/sqrt(1+tau^2*info) * exp(s^2/(2a)) * Phi(s/sqrt(a)) with a = info + 1/tau^2.
    """
    a = info + 1.0 / tau**2
    return np.log(2.0) - 0.5 * np.log1p(tau**2 * info) + s**2 / (2.0 * a) + log_ndtr(s / np.sqrt(a))


def evidence(up_c, n_c, up_k, n_k, policy: CanaryPolicy) -> dict[str, np.ndarray]:
    """Stratified difference and both one-sided mSPRT statistics; counts have shape (..., steps).

    Returns arrays over the leading axes: ``diff`` (candidate minus control up-rate), ``se``,
    ``log_e_better`` and ``log_e_harm`` (log e-values), ``radius`` (half-width of the always-valid 95%
    interval for ``diff``), ``info``.
    """
    up_c, n_c, up_k, n_k = (np.asarray(x, dtype=float) for x in (up_c, n_c, up_k, n_k))
    both = (n_c > 0) & (n_k > 0)  # a step with one arm empty says nothing about the difference
    # One pooled rate (over the steps that count) for the variance of every step: the null's common
    # rate, shrunk so that all-up or all-down counts give a small positive variance instead of zero.
    pooled = (((up_c + up_k) * both).sum(-1) + 1.0) / (((n_c + n_k) * both).sum(-1) + 2.0)
    var1 = (pooled * (1.0 - pooled))[..., None]
    safe_c, safe_k = np.where(both, n_c, 1.0), np.where(both, n_k, 1.0)
    w = np.where(both, 1.0 / (var1 * (1.0 / safe_c + 1.0 / safe_k)), 0.0)  # information of each step
    d = np.where(both, up_k / safe_k - up_c / safe_c, 0.0)
    info = w.sum(-1)
    s = (w * d).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.where(info > 0, s / np.where(info > 0, info, 1.0), 0.0)
        se = np.where(info > 0, 1.0 / np.sqrt(np.where(info > 0, info, 1.0)), np.inf)
    # Always-valid two-sided interval from the normal mixture (Johari et al. sec. 4; the same boundary
    # is Howard et al. 2021's normal-mixture confidence sequence): theta-hat +- radius holds at all times.
    tau, v = policy.promote_tau, se**2
    with np.errstate(invalid="ignore", over="ignore"):
        radius = np.sqrt(v * (v + tau**2) / tau**2 * (2.0 * np.log(1 / 0.05) + np.log1p(tau**2 / v)))
    return {"diff": diff, "se": se, "info": info, "radius": np.where(info > 0, radius, np.inf),
            "log_e_better": _log_half_mixture(s, info, policy.promote_tau),
            "log_e_harm": _log_half_mixture(-s, info, policy.harm_tau)}


def rule(up_c, n_c, up_k, n_k, step, last_step, hours, policy: CanaryPolicy,
         raters=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The canary rule on arrays: action codes (CONTINUE, RAMP, ...) and the evidence behind them.

    Counts per arm and ramp step have shape (..., steps); ``step`` is the current step index (0 = the
    starting share), ``last_step`` the index of the ramp's last share, ``hours`` the experiment's age;
    ``raters``, when given, is (control, candidate) different users per arm (else not checked). Vectorized so
    that the bench runs thousands of experiments through exactly this code; ``decide`` is its one-experiment form.
    """
    up_c, n_c, up_k, n_k = (np.asarray(x, dtype=float) for x in (up_c, n_c, up_k, n_k))
    step = np.broadcast_to(np.asarray(step, dtype=int), n_k.shape[:-1])
    hours = np.asarray(hours, dtype=float)
    ev = evidence(up_c, n_c, up_k, n_k, policy)
    enough = np.minimum(n_c.sum(-1), n_k.sum(-1)) >= policy.min_judgements
    if raters is not None:
        enough = enough & (np.minimum(*(np.asarray(r) for r in raters)) >= policy.min_raters)
    harm = enough & (ev["log_e_harm"] >= np.log(1.0 / policy.harm_alpha))
    better = enough & (ev["log_e_better"] >= np.log(1.0 / policy.promote_alpha))
    at_step = np.take_along_axis(n_k, np.clip(step, 0, n_k.shape[-1] - 1)[..., None], -1)[..., 0]
    can_ramp = ((step < np.asarray(last_step)) & (at_step >= policy.ramp_min_judgements)
                & (ev["log_e_harm"] < np.log(policy.ramp_hold)))
    # Harm first: a rollback is never delayed by anything else.
    action = np.select([harm, better, hours >= policy.max_hours, can_ramp], [ROLLBACK, PROMOTE, END, RAMP], CONTINUE)
    return action, ev


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def count(x) -> int | float:
    """A judgement count as people read it: whole when it is, else to one decimal (per-user weights)."""
    x = float(x)
    return int(x) if x.is_integer() else round(x, 1)


def decide(steps: Sequence[Mapping], started_at: datetime, now: datetime, policy: CanaryPolicy,
           raters: Mapping[str, int] | None = None) -> CanaryDecision:
    """Decide for one experiment; ``steps`` lists each ramp step so far, oldest first, as
    ``{"percent": float, "control": {"up", "down"}, "candidate": {"up", "down"}}`` (the last is current);
    ``raters`` the different users who rated each arm, ``{"control": n, "candidate": n}`` (None: not checked).

    The ramp continues from the first step's share along ``policy.shares``.
    """
    if not steps:
        raise ValueError("an experiment has at least its starting step")
    counts = np.array([[s["control"]["up"], s["control"]["down"], s["candidate"]["up"], s["candidate"]["down"]]
                       for s in steps], dtype=float)
    up_c, n_c, up_k, n_k = counts[:, 0], counts[:, 0] + counts[:, 1], counts[:, 2], counts[:, 2] + counts[:, 3]
    hours = (now - started_at).total_seconds() / 3600.0
    current = len(steps) - 1
    shares = policy.shares(steps[0]["percent"])
    by_arm = None if raters is None else (raters.get("control", 0), raters.get("candidate", 0))
    code, ev = rule(up_c, n_c, up_k, n_k, current, len(shares) - 1, hours, policy, by_arm)
    action = ACTIONS[int(code)]
    c_up, c_n, k_up, k_n = (count(x.sum()) for x in (up_c, n_c, up_k, n_k))
    e_better, e_harm = float(np.exp(ev["log_e_better"])), float(np.exp(ev["log_e_harm"]))
    diff, radius = float(ev["diff"]), float(ev["radius"])
    percent = float(steps[-1]["percent"])
    numbers = {
        "control": {"up": c_up, "down": count(c_n - c_up), "n": c_n, "rate": c_up / c_n if c_n else None},
        "candidate": {"up": k_up, "down": count(k_n - k_up), "n": k_n, "rate": k_up / k_n if k_n else None},
        "raters": dict(raters) if raters is not None else None,
        "max_judgements_per_user": policy.max_judgements_per_user,
        "diff": diff if np.isfinite(radius) else None,
        "diff_lo": diff - radius if np.isfinite(radius) else None,
        "diff_hi": diff + radius if np.isfinite(radius) else None,
        "e_better": e_better, "e_harm": e_harm,
        "promote_at": 1.0 / policy.promote_alpha, "rollback_at": 1.0 / policy.harm_alpha,
        "p_value_better": min(1.0, 1.0 / e_better), "p_value_harm": min(1.0, 1.0 / e_harm),
        "percent": percent, "step": current, "hours": hours,
        "method": "mSPRT (Johari, Pekelis & Walsh 2017), stratified by ramp step",
    }
    rates = f"candidate {_pct(numbers['candidate']['rate'])} vs production {_pct(numbers['control']['rate'])}"
    interval = ("" if numbers["diff"] is None else
                f" (difference {100 * diff:+.1f} points, always-valid 95% interval "
                f"{100 * numbers['diff_lo']:+.1f} to {100 * numbers['diff_hi']:+.1f})")
    judged = f"{count(c_n + k_n)} judgements in {hours:.1f} h"
    next_percent = None
    if action == "rollback":
        reason = (f"Rolled back: {rates}{interval}; the harm guard's evidence reached {e_harm:.0f}, past the "
                  f"{1 / policy.harm_alpha:.0f} that equal adapters reach at most {100 * policy.harm_alpha:g}% of the "
                  f"time, after {judged}.")
    elif action == "promote":
        reason = (f"Promoted: {rates}{interval}; the evidence for the candidate reached {e_better:.0f}, past the "
                  f"{1 / policy.promote_alpha:.0f} that a candidate no better reaches at most "
                  f"{100 * policy.promote_alpha:g}% of the time, after {judged}.")
    elif action == "end":
        reason = (f"Ended without a winner after {judged} (limit {policy.max_hours:g} h): {rates}{interval}; "
                  f"evidence for {e_better:.1f} of {1 / policy.promote_alpha:.0f} needed, of harm {e_harm:.1f} of "
                  f"{1 / policy.harm_alpha:.0f}; production stays.")
    elif action == "ramp":
        next_percent = shares[current + 1]
        reason = (f"Candidate share {percent:g}% -> {next_percent:g}%: {count(n_k[-1])} judgements at {percent:g}% "
                  f"and no sign of harm (harm evidence {e_harm:.1f}, below {policy.ramp_hold:g}).")
    elif min(c_n, k_n) < policy.min_judgements:
        reason = f"Waiting for {policy.min_judgements} judgements per arm (have {c_n} production, {k_n} candidate)."
    elif by_arm is not None and min(by_arm) < policy.min_raters:
        reason = (f"Waiting for {policy.min_raters} different raters per arm (have {by_arm[0]} production, "
                  f"{by_arm[1]} candidate): one person's thumbs do not decide an experiment.")
    else:
        reason = (f"No decision yet: {rates}{interval}; evidence for {e_better:.1f} of "
                  f"{1 / policy.promote_alpha:.0f}, of harm {e_harm:.1f} of {1 / policy.harm_alpha:.0f}.")
    return CanaryDecision(action, reason, numbers, next_percent)
