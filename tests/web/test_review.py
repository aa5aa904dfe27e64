"""The trust decision at the edge (web/review.py) against a real store: per-user trust and revocation."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from feedback.models import Rating
from feedback.store import FeedbackStore
from settings import Settings
from tests.feedback.feedback_helpers import SYSTEM, make_turn, user
from web import review
from web.auth import Principal

BOB, CAROL = Principal("bob", "user"), Principal("carol", "user")


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(tmp_path / "feedback.duckdb")
    yield s
    s.close()


def answer(store, who: str) -> str:
    mid = uuid.uuid4().hex
    store.record_turn(make_turn(uuid.uuid4().hex, [SYSTEM, user("Where is Paris?")], "Paris is in Spain.", who=who,
                                message_id=mid))
    return mid


def state(store, mid: str) -> str:
    return next(r["state"] for r in store.review_rows(limit=500)[0] if r["message_id"] == mid)


def test_a_revocation_between_the_trust_decision_and_the_write_leaves_the_rating_untrusted(store):
    """Bob's rating is decided while he is trusted; the admin's revocation lands before it is written (here:
    while the rating waits for the turn journal, just before the write lock). It used to land trusted,
    and as the revocation had already run, it stayed trusted."""
    ctx = SimpleNamespace(store=store, settings=Settings())
    store.set_user_trust("bob", True, actor="root")
    mid = answer(store, "bob")
    real_wait = store._turns.wait

    def revoke_first(*args, **kwargs):
        store._turns.wait = real_wait
        store.set_user_trust("bob", False, actor="root")
        return real_wait(*args, **kwargs)

    store._turns.wait = revoke_first
    stored, told = review.rate(ctx, BOB, Rating(mid, "bob", "down", correction="Paris is in France."))
    assert store.user_trusted("bob") is False and store._turns.wait == real_wait  # the hook ran
    assert state(store, mid) == "pending_review"
    assert told == stored.review == "pending_review"  # and bob is told what happened, not what was decided first


@pytest.mark.parametrize("scope", ["off", "corrections", "corrections_and_ups"])
def test_a_taken_back_judgement_gets_what_a_new_untrusted_one_gets(store, scope):
    """One rule for both: carol (never trusted) judges as bob did while trusted; after bob's revocation,
    each of his answers is in the state carol's is in, under each ``review_untrusted``."""
    ctx = SimpleNamespace(store=store, settings=Settings(review_untrusted=scope))
    store.set_user_trust("bob", True, actor="root")
    judgements = [("down", "Paris is in France."), ("up", None), ("down", None)]
    pairs = []
    for rating, correction in judgements:
        bobs, carols = answer(store, "bob"), answer(store, "carol")
        review.rate(ctx, BOB, Rating(bobs, "bob", rating, correction=correction))
        review.rate(ctx, CAROL, Rating(carols, "carol", rating, correction=correction))
        pairs.append((bobs, carols))
    assert {state(store, b) for b, _ in pairs} == {"trusted"}
    assert store.set_user_trust("bob", False, actor="root", review_untrusted=scope) == 3
    assert [state(store, b) for b, _ in pairs] == [state(store, c) for _, c in pairs]
    assert len({state(store, c) for _, c in pairs}) == (1 if scope == "off" else 2)  # the scope did matter
