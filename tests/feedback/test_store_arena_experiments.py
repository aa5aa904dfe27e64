"""Arena battles and votes; traffic-split experiments and their per-arm counts."""

from __future__ import annotations

import pytest
from feedback_helpers import make_turn, user

from feedback.errors import AlreadyVoted, BattleClosed, InvalidRating, UnknownBattle
from feedback.models import AdapterRecord, Rating

PROMPT = [user("write a haiku")]


def test_a_battle_takes_one_vote_from_the_user_it_was_shown_to(store):
    store.create_battle("b1", "alice", PROMPT, "demo-a", "answer A", "demo-b", "answer B", meta={"seed": 1})
    battle = store.get_battle("b1")
    assert (battle.prompt, battle.answer_a, battle.adapter_b, battle.meta, battle.votes) == (
        PROMPT, "answer A", "demo-b", {"seed": 1}, [])
    with pytest.raises(UnknownBattle):  # nobody else votes on it: a second voter counted the battle twice
        store.vote("b1", "admin", "tie")
    vote = store.vote("b1", "alice", "b")
    assert (vote.adapter_a, vote.adapter_b, vote.winner) == ("demo-a", "demo-b", "b")
    with pytest.raises(AlreadyVoted):  # not replaced: the first vote revealed the names
        store.vote("b1", "alice", "a")
    assert [(v.user, v.winner) for v in store.get_battle("b1").votes] == [("alice", "b")]
    with pytest.raises(UnknownBattle):
        store.vote("nope", "alice", "a")
    with pytest.raises(InvalidRating):
        store.vote("b1", "alice", "c")
    with pytest.raises(InvalidRating) as refused:  # a 10,000-character winner is not echoed back whole
        store.vote("b1", "alice", "x" * 10_000)
    assert len(str(refused.value)) < 200
    assert store.get_battle("nope") is None
    assert [v.winner for v in store.arena_votes()] == ["b"]


def test_a_second_vote_an_older_file_holds_is_not_counted(store):
    """Before the store refused them, an admin's vote on a user's battle was stored beside the user's."""
    store.create_battle("b1", "alice", PROMPT, "demo-a", "A", "demo-b", "B")
    store.vote("b1", "alice", "a")
    with store._write() as cur:
        cur.execute("INSERT INTO arena_votes VALUES ('b1', 'admin', 'a', now())")
    assert store.arena_vote_counts() == [("demo-a", "demo-b", "a", 1)]
    assert [v.user for v in store.arena_votes()] == ["alice"]
    daily = {r["adapter"]: r for r in store.adapter_daily_stats()}
    assert (daily["demo-a"]["wins"], daily["demo-b"]["losses"]) == (1, 1)
    assert [(p.source, p.user) for p in store.preference_pairs()] == [("arena", "alice")]  # trains once too


def test_an_older_files_admin_vote_does_not_take_the_owners_place(store):
    """The uncounted admin vote of an older file does not use up the vote of the user the battle was shown to."""
    store.create_battle("b1", "alice", PROMPT, "demo-a", "A", "demo-b", "B")
    with store._write() as cur:
        cur.execute("INSERT INTO arena_votes VALUES ('b1', 'admin', 'b', now())")
    assert store.arena_vote_counts() == []
    store.vote("b1", "alice", "a")
    assert store.arena_vote_counts() == [("demo-a", "demo-b", "a", 1)]
    with pytest.raises(AlreadyVoted):
        store.vote("b1", "alice", "b")


def test_no_vote_is_taken_once_an_adapter_of_the_battle_is_archived(store):
    """An archived adapter's rating stays what its votes made it while in use: a battle still waiting for its
    vote when one of its adapters was archived can no longer move it (nor its opponent's)."""
    for name in ("demo-a", "demo-b"):
        store.register_adapter(AdapterRecord(name=name, path=f"/adapters/{name}"))
    store.create_battle("b1", "alice", PROMPT, "demo-a", "A", "demo-b", "B")
    store.create_battle("b2", "alice", PROMPT, "demo-b", "A", "demo-a", "B")
    store.vote("b1", "alice", "b")
    store.set_adapter_status("demo-b", "archived")
    with pytest.raises(BattleClosed):
        store.vote("b2", "alice", "a")
    assert store.get_battle("b2").votes == []
    assert store.arena_vote_counts() == [("demo-a", "demo-b", "b", 1)]
    store.set_adapter_status("demo-b", "candidate")  # back in use: its battles count again
    store.vote("b2", "alice", "a")
    assert len(store.arena_vote_counts()) == 2


def test_decisive_votes_become_preference_pairs_and_daily_stats(store):
    store.create_battle("b1", "alice", PROMPT, "demo-a", "A", "demo-b", "B")
    store.create_battle("b2", "alice", PROMPT, "demo-a", "A2", "demo-b", "B2")
    store.create_battle("b3", "alice", PROMPT, "demo-a", "A3", "demo-b", "B3")
    store.vote("b1", "alice", "a")
    store.vote("b2", "alice", "both_bad")
    store.vote("b3", "alice", "tie")
    [pair] = store.preference_pairs()
    assert (pair.source, pair.prompt, pair.chosen, pair.rejected, pair.conversation_id) == (
        "arena", PROMPT, "A", "B", "b1")
    daily = {r["adapter"]: r for r in store.adapter_daily_stats()}
    assert (daily["demo-a"]["wins"], daily["demo-a"]["losses"]) == (1, 0)
    assert (daily["demo-b"]["wins"], daily["demo-b"]["losses"]) == (0, 1)


def test_one_active_experiment_and_per_arm_counts(store):
    first = store.start_experiment("base", "v1", 10.0, actor="admin")
    assert store.active_experiment() == first
    second = store.start_experiment("base", "v2", 20.0, actor="admin")
    assert store.active_experiment().id == second.id
    old = next(e for e in store.list_experiments() if e.id == first.id)
    assert (old.outcome, old.ended_by, old.ended_at is not None) == ("superseded", "admin", True)

    for i, arm in enumerate(["control", "control", "candidate"]):
        adapter = "base" if arm == "control" else "v2"
        store.record_turn(make_turn(f"c{i}", [user("q")], "a", adapter=adapter, message_id=f"m{i}",
                                    experiment_id=second.id, arm=arm))
    store.record_turn(make_turn("other", [user("q")], "a", message_id="outside"))
    store.rate(Rating(message_id="m0", user="u", rating="up"))
    store.rate(Rating(message_id="m0", user="w", rating="up"))
    store.rate(Rating(message_id="m1", user="u", rating="down"))
    store.rate(Rating(message_id="m2", user="u", rating="up"))
    store.rate(Rating(message_id="outside", user="u", rating="down"))
    assert store.experiment_counts(second.id) == {"control": {"up": 2, "down": 1, "messages": 2},
                                                  "candidate": {"up": 1, "down": 0, "messages": 1}}
    store.end_experiment(second.id, "promote", "candidate wins", "canary", numbers={"p": 0.97})
    assert store.active_experiment() is None
    ended = next(e for e in store.list_experiments() if e.id == second.id)
    assert (ended.outcome, ended.reason, ended.numbers) == ("promote", "candidate wins", {"p": 0.97})
    store.end_experiment(second.id, "stopped", "again", "admin")  # already ended: no change
    assert next(e for e in store.list_experiments() if e.id == second.id).outcome == "promote"
