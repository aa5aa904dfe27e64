"""record_turn: new messages only, branches for edited history, regenerate -> superseded + implicit down."""

from __future__ import annotations

import pytest
from feedback_helpers import SYSTEM, assistant, make_turn, user

from feedback.errors import NotAssistantMessage, UnknownMessage
from feedback.models import Rating


def test_turns_store_each_message_once_with_the_turn_facts(store):
    first = [SYSTEM, user("hi")]
    store.record_turn(make_turn("c1", first, "hello", message_id="a1", experiment_id="e1", arm="control"))
    store.record_turn(make_turn("c1", [*first, assistant("hello"), user("more")], "sure", message_id="a2"))
    history = store.conversation("c1")
    assert [(m.position, m.role, m.content) for m in history] == [
        (0, "system", SYSTEM["content"]), (1, "user", "hi"), (2, "assistant", "hello"), (3, "user", "more"),
        (4, "assistant", "sure")]
    a1 = store.get_message("a1")
    assert (a1.adapter, a1.base_model, a1.sampling, a1.latency_ms, a1.first_token_ms) == (
        "demo-a", "tiny", {"temperature": 0.7, "top_p": 0.95}, 12.5, 3.0)
    assert (a1.prompt_tokens, a1.completion_tokens, a1.finish_reason, a1.user) == (7, 5, "stop", "alice")
    assert (a1.experiment_id, a1.arm, a1.superseded) == ("e1", "control", False)
    assert a1.created_at.utcoffset().total_seconds() == 0
    assert store.get_message("nope") is None
    assert store.stats()["totals"]["messages"] == 5


def test_edited_history_continues_in_a_branch_and_finds_it_again(store):
    store.record_turn(make_turn("c1", [user("hi")], "hello", message_id="a1"))
    edited = [user("hi"), assistant("something else"), user("next")]
    store.record_turn(make_turn("c1", edited, "branch answer", message_id="b1"))
    branch = store.get_message("b1").conversation_id
    assert branch == "c1.1"
    assert [m.content for m in store.conversation(branch)] == ["hi", "something else", "next", "branch answer"]
    assert [m.content for m in store.conversation("c1")] == ["hi", "hello"]  # the original is untouched
    # The client keeps sending the original id with the edited history: the turn lands in the same branch.
    store.record_turn(make_turn("c1", [*edited, assistant("branch answer"), user("again")], "x", message_id="b2"))
    assert store.get_message("b2").conversation_id == branch
    # And the original line still continues in the original conversation.
    store.record_turn(make_turn("c1", [user("hi"), assistant("hello"), user("q")], "y", message_id="a2"))
    assert store.get_message("a2").conversation_id == "c1"


def test_regenerate_supersedes_and_implies_a_thumbs_down(store):
    prompt = [SYSTEM, user("hi")]
    store.record_turn(make_turn("c1", prompt, "bad answer", message_id="a1"))
    store.record_turn(make_turn("c1", prompt, "better answer", message_id="a2", replaces="a1"))
    old, new = store.get_message("a1"), store.get_message("a2")
    assert old.superseded and not new.superseded
    assert (new.position, new.replaces) == (old.position, "a1")
    assert [m.content for m in store.conversation("c1")] == [SYSTEM["content"], "hi", "better answer"]
    [example] = store.rated_examples()
    assert (example.message_id, example.rating, example.implicit, example.user) == ("a1", "down", True, "alice")
    assert example.prompt == prompt
    assert store.stats()["totals"]["down"] == 1


def test_regenerate_keeps_an_explicit_rating(store):
    store.record_turn(make_turn("c1", [user("hi")], "answer", message_id="a1"))
    store.rate(Rating(message_id="a1", user="alice", rating="up"))
    store.record_turn(make_turn("c1", [user("hi")], "another", message_id="a2", replaces="a1"))
    [example] = store.rated_examples()
    assert (example.rating, example.implicit) == ("up", False)


def test_regenerating_an_earlier_answer_drops_what_followed_it(store):
    store.record_turn(make_turn("c1", [user("q1")], "a1", message_id="a1"))
    store.record_turn(make_turn("c1", [user("q1"), assistant("a1"), user("q2")], "a2", message_id="a2"))
    store.rate(Rating(message_id="a2", user="bob", rating="up"))
    store.record_turn(make_turn("c1", [user("q1")], "a1 again", message_id="a3", replaces="a1"))
    assert [m.content for m in store.conversation("c1")] == ["q1", "a1 again"]
    assert store.get_message("a2").superseded
    # a2 keeps the history it was generated from, not the regenerated answer.
    rated = {e.message_id: e for e in store.rated_examples()}
    assert rated["a2"].prompt == [user("q1"), assistant("a1"), user("q2")]


def test_regenerate_of_unknown_or_user_message_is_refused(store):
    store.record_turn(make_turn("c1", [user("hi")], "hello", message_id="a1"))
    user_id = store.conversation("c1")[0].id
    with pytest.raises(UnknownMessage):
        store.record_turn(make_turn("c1", [user("hi")], "x", replaces="nope"))
    with pytest.raises(NotAssistantMessage):
        store.record_turn(make_turn("c1", [user("hi")], "x", replaces=user_id))
    assert len(store.conversation("c1", include_superseded=True)) == 2  # the failed turns stored nothing
