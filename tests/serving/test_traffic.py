"""Sticky A/B assignment: stable per user, the right share overall, independent across experiments."""

from __future__ import annotations

import pytest

from serving.traffic import assign_arm

USERS = [f"user-{i}" for i in range(20_000)]


def test_same_user_same_arm():
    for user in USERS[:200]:
        first = assign_arm(user, "exp-1", 50)
        assert all(assign_arm(user, "exp-1", 50) == first for _ in range(3))


@pytest.mark.parametrize("percent", [10, 50])
def test_candidate_share_matches_percent(percent):
    share = sum(assign_arm(u, "exp-1", percent) == "candidate" for u in USERS) / len(USERS) * 100
    assert abs(share - percent) <= 1.5


def test_edges():
    assert all(assign_arm(u, "exp-1", 0) == "control" for u in USERS[:2000])
    assert all(assign_arm(u, "exp-1", 100) == "candidate" for u in USERS[:2000])
    with pytest.raises(ValueError):
        assign_arm("u", "exp-1", 101)
    with pytest.raises(ValueError):
        assign_arm("u", "exp-1", -1)


def test_raising_percent_only_moves_users_into_the_candidate():
    # Same experiment, wider rollout: nobody who already saw the candidate is moved back.
    before = {u for u in USERS if assign_arm(u, "exp-1", 10) == "candidate"}
    after = {u for u in USERS if assign_arm(u, "exp-1", 30) == "candidate"}
    assert before < after


def test_experiments_assign_independently():
    a = [assign_arm(u, "exp-1", 50) == "candidate" for u in USERS]
    b = [assign_arm(u, "exp-2", 50) == "candidate" for u in USERS]
    both = sum(x and y for x, y in zip(a, b, strict=True)) / len(USERS)
    assert abs(both - 0.25) < 0.015  # independent halves overlap in a quarter
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert any(assign_arm("c" + str(i), "ab", 50) != assign_arm("bc" + str(i), "a", 50) for i in range(50))
