"""Sticky A/B traffic assignment: a user always lands in the same arm of an experiment."""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["control", "candidate"]


def assign_arm(user: str, experiment_id: str, percent: float) -> Arm:
    """The arm for ``user``: ``candidate`` for ``percent`` % of users, the same answer every time.

    A hash instead of a stored table, so assignment needs no state and survives restarts; the
    experiment id is hashed in, so a new experiment reshuffles who sees the candidate. A user's
    position is fixed, so raising ``percent`` (the canary's ramp) only moves users from control to
    candidate, never back.
    """
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be within [0, 100], got {percent}")
    # NUL separator: ("ab", "c") and ("a", "bc") must not hash alike.
    digest = hashlib.sha256(f"{experiment_id}\0{user}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64 * 100.0  # uniform in [0, 100)
    return "candidate" if position < percent else "control"
