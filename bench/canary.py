"""Simulate the canary policy: how often it promotes, rolls back or ends undecided, and how fast.

Runs thousands of experiments at once through ``retrain.canary.rule``, the function ``decide`` (and so
the app's 5-minute check) calls, with the default policy from settings. Judged answers arrive as a
Poisson stream (400 a day by default), each to the candidate with the current ramp share; the rule
looks every 5 minutes for 7 days.

    python bench/canary.py            # table
    python bench/canary.py --json     # {"equal_10": {"promote": f, "rollback": f, "none": f, "median_hours": h, "runs": n}, ...}
    python bench/canary.py --write-results   # also append a dated line to bench/RESULTS.md

``median_hours`` is the median time to a decision over the runs that decided (promote or roll back),
null when none did; "none" counts runs that ended at the time limit without one.

Besides the simulation it prints, per scenario, an information bound: the power of the best
fixed-horizon one-sided test at the same alpha that saw all 7 days (or 24 h) of judgements split
50/50 from the start. No rule, sequential or not, can beat it, so a target above it cannot be met.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrain.canary import CONTINUE, PROMOTE, RAMP, ROLLBACK, CanaryPolicy, rule  # noqa: E402
from settings import Settings  # noqa: E402

BASE_RATE = 0.6
SCENARIOS = {  # name -> (candidate minus control up-rate, starting share %)
    "equal_10": (0.0, 10.0),
    "equal_50": (0.0, 50.0),
    "better_10": (0.10, 10.0),
    "worse_5": (-0.05, 10.0),
    "worse_10": (-0.10, 10.0),
}


def simulate(effect: float, start_percent: float, policy: CanaryPolicy, *, runs: int, per_day: float,
             check_minutes: float, days: float, seed: int) -> dict:
    """Outcome fraction per action and decision hours over ``runs`` simulated experiments."""
    rng = np.random.default_rng(seed)
    shares = np.array(policy.shares(start_percent)) / 100.0
    n_steps = len(shares)
    up_c, n_c, up_k, n_k = (np.zeros((runs, n_steps)) for _ in range(4))
    step = np.zeros(runs, dtype=int)
    outcome = np.full(runs, CONTINUE)
    hours_at = np.full(runs, np.nan)
    rows = np.arange(runs)
    lam = per_day * check_minutes / (24 * 60)
    p_c, p_k = BASE_RATE, BASE_RATE + effect
    ramp_hours = [[] for _ in range(n_steps)]
    for look in range(1, int(round(days * 24 * 60 / check_minutes)) + 1):
        active = outcome == CONTINUE
        if not active.any():
            break
        share = shares[step]
        new_k = rng.poisson(lam * share) * active
        new_c = rng.poisson(lam * (1.0 - share)) * active
        n_k[rows, step] += new_k
        n_c[rows, step] += new_c
        up_k[rows, step] += rng.binomial(new_k, p_k)
        up_c[rows, step] += rng.binomial(new_c, p_c)
        hours = look * check_minutes / 60.0
        action, _ = rule(up_c, n_c, up_k, n_k, step, n_steps - 1, hours, policy)
        action = np.where(active, action, CONTINUE)
        ramping = action == RAMP
        step = step + ramping
        for s in range(1, n_steps):
            ramp_hours[s].extend([hours] * int((ramping & (step == s)).sum()))
        final = active & (action != CONTINUE) & ~ramping
        outcome[final] = action[final]
        hours_at[final] = hours
    decided = (outcome == PROMOTE) | (outcome == ROLLBACK)
    return {
        "promote": float((outcome == PROMOTE).mean()),
        "rollback": float((outcome == ROLLBACK).mean()),
        "none": float(1.0 - decided.mean()),
        "median_hours": float(np.median(hours_at[decided])) if decided.any() else None,
        "runs": runs,
        "rollback_24h": float(((outcome == ROLLBACK) & (hours_at <= 24.0)).mean()),
        "median_ramp_hours": [float(np.median(h)) if h else None for h in ramp_hours[1:]],
    }


def bound(effect: float, alpha: float, judgements: float) -> float:
    """Power of the best one-sided fixed-horizon z-test at ``alpha`` with ``judgements`` split 50/50."""
    if effect == 0:
        return alpha
    p_k = BASE_RATE + effect
    se = np.sqrt((BASE_RATE * (1 - BASE_RATE) + p_k * (1 - p_k)) / (judgements / 2))
    return float(norm.sf(norm.isf(alpha) - abs(effect) / se))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--per-day", type=float, default=400.0, help="judged answers a day, both arms together")
    ap.add_argument("--check-minutes", type=float, default=5.0)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a CanaryPolicy field, e.g. --set harm_alpha=0.1 (to see a trade-off)")
    ap.add_argument("--json", action="store_true", help="print one JSON object, scenario -> outcome fractions")
    ap.add_argument("--write-results", action="store_true", help="append a dated line to bench/RESULTS.md")
    args = ap.parse_args(argv)

    settings = Settings()
    policy = CanaryPolicy.from_settings(settings)
    for item in args.set:
        key, _, value = item.partition("=")
        current = getattr(policy, key)  # AttributeError names an unknown field
        parsed = tuple(float(v) for v in value.split(",")) if isinstance(current, tuple) else type(current)(value)
        policy = dataclasses.replace(policy, **{key: parsed})
    t0 = time.perf_counter()
    results = {}
    for i, (name, (effect, start)) in enumerate(SCENARIOS.items()):
        results[name] = simulate(effect, start, policy, runs=args.runs, per_day=args.per_day,
                                 check_minutes=args.check_minutes, days=args.days, seed=args.seed + i)
    elapsed = time.perf_counter() - t0
    if args.json:
        keys = ("promote", "rollback", "none", "median_hours", "runs")
        print(json.dumps({name: {k: r[k] for k in keys} for name, r in results.items()}))
        return 0

    week = args.per_day * args.days
    print(f"canary policy: {policy}")
    print(f"{args.runs} runs per scenario, {args.per_day:g} judged answers/day, a look every {args.check_minutes:g} min, "
          f"{args.days:g} days, base up-rate {BASE_RATE}; {elapsed:.0f} s")
    print()
    print("| scenario | promote | roll back | none | median h to decide | rolled back <= 24 h | median h to 25% / 50% "
          "| bound: best fixed test, 7 d (24 h) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        effect = SCENARIOS[name][0]
        alpha = policy.promote_alpha if effect > 0 else policy.harm_alpha
        ramp = " / ".join("-" if h is None else f"{h:.1f}" for h in r["median_ramp_hours"]) or "-"
        med = "-" if r["median_hours"] is None else f"{r['median_hours']:.1f}"
        b = "-" if effect == 0 else f"{bound(effect, alpha, week):.0%} ({bound(effect, alpha, args.per_day):.0%})"
        print(f"| {name} | {r['promote']:.1%} | {r['rollback']:.1%} | {r['none']:.1%} | {med} | "
              f"{r['rollback_24h']:.1%} | {ramp} | {b} |")
    if args.write_results:
        line = (f"- {date.today().isoformat()} canary: {args.runs} runs/scenario, {args.per_day:g}/day, "
                f"{args.check_minutes:g}-min looks, {args.days:g} d: "
                + "; ".join(f"{n} promote {r['promote']:.1%} rollback {r['rollback']:.1%} "
                            f"median {r['median_hours'] or 0:.0f} h" for n, r in results.items()))
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
