"""A user's conversation list: newest first, search, paging, resume (branches), rename, soft and hard delete."""

from __future__ import annotations

import pytest
from feedback_helpers import assistant, make_turn, user

from feedback.errors import InvalidRating, InvalidTitle, UnknownConversation
from feedback.models import Rating


def _chat(store, cid, question, answer, who="alice", message_id=None):
    store.record_turn(make_turn(cid, [user(question)], answer, who=who, message_id=message_id))


def test_list_is_newest_first_per_user_and_paged(store):
    for i in range(5):
        _chat(store, f"c{i}", f"question {i}", f"answer {i}")
    _chat(store, "bob1", "bob's secret", "x", who="bob")
    # c1 gets a new turn: it moves to the top.
    store.record_turn(make_turn("c1", [user("question 1"), assistant("answer 1"), user("more")], "again"))
    listed = store.list_conversations("alice")
    assert [c.id for c in listed] == ["c1", "c4", "c3", "c2", "c0"]
    assert (listed[0].title, listed[0].answers) == ("question 1", 2)
    assert [c.id for c in store.list_conversations("alice", limit=2, offset=1)] == ["c4", "c3"]
    assert [c.id for c in store.list_conversations("bob")] == ["bob1"]
    assert len(store.list_conversations("alice", limit=10**9)) == 5  # the limit is capped, not refused


def test_search_matches_text_literally_and_only_the_users_own(store):
    _chat(store, "c1", "how do I bake bread?", "with flour")
    _chat(store, "c2", "weather today", "sunny, 100% chance")
    _chat(store, "b1", "bread for bob", "x", who="bob")
    assert [c.id for c in store.list_conversations("alice", query="FLOUR")] == ["c1"]
    assert [c.id for c in store.list_conversations("alice", query="bread")] == ["c1"]
    # LIKE wildcards and quotes an attacker might type are plain text here.
    assert [c.id for c in store.list_conversations("alice", query="%")] == ["c2"]
    assert store.list_conversations("alice", query="_") == []
    assert store.list_conversations("alice", query="' OR 1=1 --") == []


def test_resume_opens_the_latest_branch_with_the_users_judgements(store):
    _chat(store, "c1", "hi", "hello", message_id="a1")
    store.rate(Rating(message_id="a1", user="alice", rating="down", reason="unhelpful"))
    store.rate(Rating(message_id="a1", user="bob", rating="up"))
    # The user corrected the answer and went on: the chat continues in branch c1.1.
    edited = [user("hi"), assistant("Hello! How can I help?"), user("next")]
    store.record_turn(make_turn("c1", edited, "branch answer", message_id="b1"))
    view = store.load_conversation("alice", "c1")
    assert view.id == "c1"
    assert [m.content for m in view.messages] == ["hi", "Hello! How can I help?", "next", "branch answer"]
    assert [c.id for c in store.list_conversations("alice")] == ["c1"]  # branches are not listed apart
    view_root = store.load_conversation("alice", "c1")
    assert view_root.title == "hi"
    _chat(store, "c2", "other", "x", message_id="a2")
    store.rate(Rating(message_id="a2", user="alice", rating="down", reason="too_long"))
    assert store.load_conversation("alice", "c2").ratings == {"a2": ("down", "too_long")}
    with pytest.raises(UnknownConversation):
        store.load_conversation("bob", "c1")  # someone else's id reads as unknown
    with pytest.raises(UnknownConversation):
        store.load_conversation("alice", "c1.1")  # a branch is not a conversation of its own


def test_rename_and_blank_title_goes_back_to_the_question(store):
    _chat(store, "c1", "hi there", "hello")
    assert store.rename_conversation("alice", "c1", "  Greetings \n test ") == "Greetings test"
    assert store.list_conversations("alice")[0].title == "Greetings test"
    assert [c.id for c in store.list_conversations("alice", query="greetings")] == ["c1"]
    assert store.rename_conversation("alice", "c1", "   ") == "hi there"
    with pytest.raises(InvalidTitle):
        store.rename_conversation("alice", "c1", "x" * 201)
    with pytest.raises(UnknownConversation):
        store.rename_conversation("mallory", "c1", "mine now")
    assert store.list_conversations("alice")[0].title == "hi there"


def test_soft_delete_keeps_training_data_and_forget_erases_it(store):
    _chat(store, "c1", "keep me for training", "ok", message_id="a1")
    _chat(store, "c2", "forget me", "ok", message_id="a2")
    store.rate(Rating(message_id="a1", user="alice", rating="up"))
    store.rate(Rating(message_id="a2", user="alice", rating="down", reason="wrong", comment="no"))
    with pytest.raises(UnknownConversation):
        store.delete_conversation("mallory", "c1")
    store.delete_conversation("alice", "c1")
    assert [c.id for c in store.list_conversations("alice")] == ["c2"]
    with pytest.raises(UnknownConversation):
        store.load_conversation("alice", "c1")
    assert {e.message_id for e in store.rated_examples()} == {"a1", "a2"}  # soft: still training data
    store.delete_conversation("alice", "c2", forget=True)
    assert store.list_conversations("alice") == []
    assert {e.message_id for e in store.rated_examples()} == {"a1"}
    assert store.get_message("a2") is None


def test_reason_goes_with_a_thumbs_down_from_the_fixed_list(store):
    _chat(store, "c1", "hi", "hello", message_id="a1")
    stored = store.rate(Rating(message_id="a1", user="alice", rating="down", reason="unsafe"))
    assert stored.reason == "unsafe"
    [row] = store.rated_conversations()
    assert (row["rating"], row["reason"]) == ("down", "unsafe")
    assert store.export_table().to_pylist()[-1]["reason"] == "unsafe"
    for bad in ("UNSAFE", "because", "<script>"):
        with pytest.raises(InvalidRating):
            store.rate(Rating(message_id="a1", user="alice", rating="down", reason=bad))
    with pytest.raises(InvalidRating):
        store.rate(Rating(message_id="a1", user="alice", rating="up", reason="wrong"))
    store.rate(Rating(message_id="a1", user="alice", rating="up"))  # a later thumbs-up clears the reason
    assert store.rated_conversations()[0]["reason"] is None
