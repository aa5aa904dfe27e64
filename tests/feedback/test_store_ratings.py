"""rate(): upsert per (message, user), corrections, every error; what the retrain loop and admin read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from feedback_helpers import SYSTEM, assistant, make_turn, user

from feedback.errors import InvalidRating, NotAssistantMessage, UnknownMessage
from feedback.models import Rating
from feedback.store import MAX_TEXT_CHARS
from feedback.store_core import upsert


@pytest.fixture
def answered(store):
    store.record_turn(make_turn("c1", [SYSTEM, user("who are you?")], "a bot", message_id="a1"))
    return store


def test_re_rating_replaces_and_is_idempotent(answered):
    s = answered
    first = s.rate(Rating(message_id="a1", user="alice", rating="up", comment="ok"))
    assert first.created_at is not None and first.created_at.tzinfo is not None
    for _ in range(3):
        s.rate(Rating(message_id="a1", user="alice", rating="down", comment="wrong"))
    totals = s.stats()["totals"]
    assert (totals["up"], totals["down"], totals["rated_messages"]) == (0, 1, 1)
    [row] = s.rated_conversations()
    assert (row["rating"], row["comment"], row["prompt"], row["answer"]) == ("down", "wrong", "who are you?", "a bot")


def test_upsert_inserts_once_then_updates_and_takes_values_as_data(store):
    # update-then-insert stands in for ON CONFLICT (store_core.upsert says why): one row per key, and a
    # user's text is a bound value, never SQL.
    name = "o'brien\"; DROP TABLE ratings; --"
    for trusted in (True, False, True):
        with store._write() as cur:
            upsert(cur, "user_trust", {"user": name}, {"trusted": trusted, "actor": "admin",
                                                        "updated_at": datetime(2026, 1, 1)})
    assert [(r["user"], r["trusted"]) for r in store.list_user_trust()] == [(name, True)]
    assert store.stats()["totals"]["up"] == 0  # the ratings table is still there


def test_different_users_ratings_coexist(answered):
    s = answered
    s.rate(Rating(message_id="a1", user="alice", rating="up"))
    s.rate(Rating(message_id="a1", user="bob", rating="down"))
    totals = s.stats()["totals"]
    assert (totals["up"], totals["down"], totals["rated_messages"]) == (1, 1, 1)
    assert {(r["user"], r["rating"]) for r in s.rated_conversations()} == {("alice", "up"), ("bob", "down")}
    [example] = s.rated_examples()
    assert (example.rating, example.user) == ("down", "bob")  # the latest rating by anyone


def test_correction_latest_per_user_wins(answered):
    s = answered
    s.rate(Rating(message_id="a1", user="alice", rating="down", correction="I am Tuneloop."))
    s.rate(Rating(message_id="a1", user="alice", rating="down", correction="I am Tuneloop, a chat bot."))
    s.rate(Rating(message_id="a1", user="alice", rating="down"))  # re-rating without a correction keeps it
    assert s.stats()["totals"]["corrections"] == 1
    [example] = s.rated_examples()
    assert example.correction == "I am Tuneloop, a chat bot."
    [pair] = s.preference_pairs()
    assert (pair.chosen, pair.rejected, pair.source, pair.user) == ("I am Tuneloop, a chat bot.", "a bot", "correction",
                                                                     "alice")
    assert pair.prompt == [SYSTEM, user("who are you?")]
    assert [r["correction"] for r in s.rated_conversations(has_correction=True)] == ["I am Tuneloop, a chat bot."]
    assert s.rated_conversations(has_correction=False) == []


@pytest.mark.parametrize("rating, error", [
    (Rating(message_id="nope", user="u", rating="up"), UnknownMessage),
    (Rating(message_id="a1", user="u", rating="meh"), InvalidRating),
    (Rating(message_id="a1", user="u", rating="up", comment="x" * (MAX_TEXT_CHARS + 1)), InvalidRating),
    (Rating(message_id="a1", user="u", rating="down", correction="x" * (MAX_TEXT_CHARS + 1)), InvalidRating),
    (Rating(message_id="a1", user="u", rating="down", correction="  \n"), InvalidRating),
    # Format characters show nothing: a correction of zero-width spaces and word joiners is empty.
    (Rating(message_id="a1", user="u", rating="down", correction=" \u200b\u2060\ufeff "), InvalidRating),
    # Whatever the caller, no NUL or lone surrogate reaches the file (the HTTP API checks too; the Gradio API did not).
    (Rating(message_id="a1", user="u", rating="down", correction="fix\x00ed"), InvalidRating),
    (Rating(message_id="a1", user="u", rating="down", comment="\ud800lone"), InvalidRating),
])
def test_bad_ratings_are_refused_and_store_nothing(answered, rating, error):
    with pytest.raises(error):
        answered.rate(rating)
    assert answered.rated_examples() == []


def test_user_messages_cannot_be_rated(answered):
    user_message = answered.conversation("c1")[1]
    assert user_message.role == "user"
    with pytest.raises(NotAssistantMessage):
        answered.rate(Rating(message_id=user_message.id, user="u", rating="up"))


def test_rated_examples_window_and_new_count(answered):
    s = answered
    before = datetime.now(UTC)
    s.rate(Rating(message_id="a1", user="alice", rating="up"))
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert [e.message_id for e in s.rated_examples(since=before)] == ["a1"]
    assert s.rated_examples(since=after) == [] and s.rated_examples(until=before) == []
    assert (s.new_rated_count(None), s.new_rated_count(before), s.new_rated_count(after)) == (1, 1, 0)


def test_stats_per_adapter_and_day(store):
    store.record_turn(make_turn("c1", [user("q")], "x", message_id="a1", adapter="demo-a"))
    store.record_turn(make_turn("c2", [user("q")], "y", message_id="b1", adapter="demo-b"))
    store.record_turn(make_turn("c2", [user("q"), assistant("y"), user("q2")], "z", message_id="b2", adapter="demo-b"))
    store.rate(Rating(message_id="a1", user="u", rating="up"))
    store.rate(Rating(message_id="b1", user="u", rating="down", correction="better"))
    store.rate(Rating(message_id="b1", user="v", rating="down"))
    stats = store.stats()
    assert stats["totals"] == {"messages": 6, "assistant_messages": 3, "rated_messages": 2, "up": 1, "down": 2,
                               "corrections": 1}
    assert stats["per_adapter"] == [
        {"adapter": "demo-a", "messages": 1, "rated": 1, "up": 1, "down": 0, "corrections": 0},
        {"adapter": "demo-b", "messages": 2, "rated": 1, "up": 0, "down": 2, "corrections": 1}]
    [day] = stats["per_day"]
    assert day == {"day": datetime.now(UTC).strftime("%Y-%m-%d"), "messages": 6, "rated": 2, "up": 1, "down": 2,
                   "corrections": 1}
    assert store.adapter_rating_stats() == [{"adapter": "demo-a", "messages": 1, "up": 1, "down": 0},
                                            {"adapter": "demo-b", "messages": 2, "up": 0, "down": 2}]
    filtered = store.rated_conversations(adapter="demo-b", rating="down", user="v")
    assert [(r["message_id"], r["user"]) for r in filtered] == [("b1", "v")]
