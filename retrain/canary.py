"""The canary policy: from thumbs counts of the two arms, decide whether to promote, roll back or wait.

Pure: numbers in, a decision out. ``retrain.promotion`` applies it.

A posterior threshold checked again and again as votes arrive decides on noise more often than
``1 - confidence`` suggests (every look is another chance). Simulated with equal arms (up-rate 0.6):
5 looks, every 200 judgements per arm, at confidence 0.995 -> ~3% false decisions; 10 looks at 0.99
-> ~9%; a look every 10 judgements up to 1000 at 0.95 -> ~50%. Between equal arms a false decision
costs little (either is as good), but set ``confidence`` with the number of looks in mind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from feedback.ab_stats import prob_better

Action = Literal["promote", "rollback", "continue", "end"]


@dataclass(frozen=True)
class CanaryDecision:
    action: Action
    reason: str
    numbers: dict = field(default_factory=dict)  # JSON-ready: counts, rates, probability, hours


def decide(
    control: dict,
    candidate: dict,
    started_at: datetime,
    now: datetime,
    *,
    min_judgements: int,
    confidence: float,
    max_hours: float,
) -> CanaryDecision:
    """Promote, roll back, keep going, or end without a winner; arms are ``{"up": int, "down": int}``.

    A winner needs both arms at ``min_judgements`` and a posterior probability of being better of at
    least ``confidence``; a winner found at the time limit still counts. Past ``max_hours`` without
    one, the experiment ends and production stays as it is.
    """
    c_up, c_down = int(control["up"]), int(control["down"])
    k_up, k_down = int(candidate["up"]), int(candidate["down"])
    c_n, k_n = c_up + c_down, k_up + k_down
    hours = (now - started_at).total_seconds() / 3600.0
    p_candidate = prob_better(k_up, k_down, c_up, c_down)
    numbers = {
        "control": {"up": c_up, "down": c_down, "n": c_n, "rate": c_up / c_n if c_n else None},
        "candidate": {"up": k_up, "down": k_down, "n": k_n, "rate": k_up / k_n if k_n else None},
        "p_candidate_better": p_candidate,
        "hours": hours,
        "min_judgements": min_judgements,
        "confidence": confidence,
    }
    enough = min(c_n, k_n) >= min_judgements
    if enough and p_candidate >= confidence:
        return CanaryDecision("promote", f"candidate better with probability {p_candidate:.3f}", numbers)
    if enough and 1.0 - p_candidate >= confidence:
        return CanaryDecision("rollback", f"control better with probability {1 - p_candidate:.3f}", numbers)
    if hours >= max_hours:
        return CanaryDecision("end", f"no winner after {hours:.1f} h (limit {max_hours:g} h)", numbers)
    if not enough:
        reason = f"waiting for {min_judgements} judgements per arm (have {c_n} control, {k_n} candidate)"
    else:
        reason = f"no winner yet: candidate better with probability {p_candidate:.3f}"
    return CanaryDecision("continue", reason, numbers)
