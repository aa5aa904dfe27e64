"""The scrubbed-text cache: stores only scrubbed text, by the raw text's hash; forgetting a conversation
takes its scrubbed texts with it."""

from __future__ import annotations

import hashlib

from feedback.models import Rating
from tests.feedback.feedback_helpers import SYSTEM, make_turn, user


def key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_cache_round_trip_and_version(store):
    store.put_scrubbed("v1", {key("a@b.co hi"): ("[EMAIL] hi", {"[EMAIL]": 1}), key("plain"): ("plain", {})})
    assert store.get_scrubbed("v1", [key("a@b.co hi"), key("plain"), key("unknown")]) == {
        key("a@b.co hi"): ("[EMAIL] hi", {"[EMAIL]": 1}), key("plain"): ("plain", {})}
    assert store.get_scrubbed("v2", [key("plain")]) == {}  # another scrubber version: not seen
    store.put_scrubbed("v2", {key("plain"): ("plain!", {})})
    assert store.get_scrubbed("v2", [key("plain")]) == {key("plain"): ("plain!", {})}
    assert store.get_scrubbed("v1", [key("plain")]) == {}


def test_forgetting_a_conversation_drops_its_scrubbed_texts(store):
    question, answer, fix = "my mail is x@y.org", "noted", "noted, x@y.org"
    store.record_turn(make_turn("c1", [SYSTEM, user(question)], answer, message_id="m1"))
    store.rate(Rating(message_id="m1", user="alice", rating="up", correction=fix))
    other = "unrelated text"
    store.put_scrubbed("v1", {key(t): (t.replace("x@y.org", "[EMAIL]"), {}) for t in (question, answer, fix, other)})
    store.delete_conversation("alice", "c1", forget=True)
    assert set(store.get_scrubbed("v1", [key(t) for t in (question, answer, fix, other)])) == {key(other)}
