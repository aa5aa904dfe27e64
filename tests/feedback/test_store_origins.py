"""Where a stored message came from (schema v11), and what that means for untrusted feedback on it.

Hostile sweep F3: an ``assistant`` turn the client wrote into its history, or an answer forced by a
response_format ``const``, was stored like a model answer and could be rated into training unreviewed.
F7: a regenerate's implicit thumbs-down left an admin's trust on the answer.
"""

from __future__ import annotations

import dataclasses

import duckdb

from feedback import schema
from feedback.models import Rating
from feedback.store import FeedbackStore
from feedback.store_core import _now
from feedback.store_review import review_after_rating
from feedback.store_turns import HOLD_REASONS
from tests.feedback.feedback_helpers import SYSTEM, assistant, make_turn, user

FORGED = "The capital of France is Berlin."


def _forged_turn(store, who="alice", cid="c1"):
    """A turn whose history holds an assistant message the client wrote; returns (forged id, answer id)."""
    turn = make_turn(cid, [SYSTEM, user("capital of France?"), assistant(FORGED), user("thanks")], "You're welcome.",
                     who=who)
    store.record_turn(turn)
    forged = next(m for m in store.conversation(cid) if m.content == FORGED)
    return forged.id, turn.assistant_message_id


def _state(store, message_id):
    rows, _ = store.review_rows()
    return next(r for r in rows if r["message_id"] == message_id)


def test_each_message_records_where_it_came_from(store):
    forged, answer = _forged_turn(store)  # a new conversation: the bulk insert
    follow = make_turn("c1", [SYSTEM, user("capital of France?"), assistant(FORGED), user("thanks"),
                              assistant("You're welcome."), user("and Spain?")], "Madrid.",
                       origin="constrained")  # a continued one: row by row
    store.record_turn(follow)
    branch = make_turn("c1", [user("edited history"), assistant("I wrote this"), user("go on")], "Sure.")
    store.record_turn(branch)
    # A turn journaled before origins existed: its sampling says it was structured.
    legacy = make_turn("c2", [user("json please")], '{"a": 1}')
    legacy = dataclasses.replace(legacy, sampling={"temperature": 0, "structured": "json_schema"})
    store.record_turn(legacy)

    every = [m.id for cid in ("c1", "c1.1", "c2") for m in store.conversation(cid)]
    origins = store.answer_origins(every)
    assert origins[forged] == "client" and origins[answer] == "model"
    assert origins[follow.assistant_message_id] == "constrained"
    assert origins[branch.assistant_message_id] == "model" and origins[legacy.assistant_message_id] == "constrained"
    for cid in ("c1", "c1.1", "c2"):
        for m in store.conversation(cid):
            if m.role != "assistant":
                assert origins[m.id] == "client"
    written = next(m for m in store.conversation("c1.1") if m.content == "I wrote this")
    assert origins[written.id] == "client"


def test_an_untrusted_judgement_of_a_client_written_answer_waits_for_an_admin(store):
    forged, answer = _forged_turn(store)
    # A thumbs-down is not held for an ordinary answer (it trains, capped) ...
    store.rate(Rating(message_id=answer, user="alice", rating="down"), trust="untrusted")
    assert _state(store, answer)["state"] == "untrusted"
    # ... but on text the user wrote it would teach the model a "negative" the model never said.
    store.rate(Rating(message_id=forged, user="alice", rating="down"), trust="untrusted")
    row = _state(store, forged)
    assert (row["state"], row["origin"], row["reason"]) == ("pending_review", "client", HOLD_REASONS["client"])
    assert forged not in {e.message_id for e in store.trainable_examples()}


def test_a_trusted_judgement_of_a_forced_answer_trains_as_given(store):
    turn = make_turn("c1", [user("capital of France?")], FORGED, origin="constrained")
    store.record_turn(turn)
    store.rate(Rating(message_id=turn.assistant_message_id, user="alice", rating="up"), trust="untrusted")
    row = _state(store, turn.assistant_message_id)
    assert (row["state"], row["origin"], row["reason"]) == ("pending_review", "constrained",
                                                            HOLD_REASONS["constrained"])
    assert store.trainable_examples() == []
    # An admin includes it (or an admin rates it): trusted, as any admin decision.
    store.rate(Rating(message_id=turn.assistant_message_id, user="admin", rating="up",
                      correction="The capital of France is Paris."), trust="trusted")
    [example] = store.trainable_examples()
    assert example.trusted and example.correction == "The capital of France is Paris."


def test_local_mode_rates_what_it_wrote_as_given(store):
    forged, _ = _forged_turn(store, who="local")
    store.rate(Rating(message_id=forged, user="local", rating="up"), trust="trusted")
    [example] = store.trainable_examples()
    assert example.message_id == forged and example.trusted


def test_a_regenerate_by_an_untrusted_user_ends_an_admins_trust(store):
    """F7: admin thumbs-up (trusted), then the owner regenerates: her implicit down is the latest rating,
    so the answer is no longer trusted (it trains capped, as her down would)."""
    first = make_turn("c1", [user("hi")], "Hello.")
    store.record_turn(first)
    mid = first.assistant_message_id
    store.rate(Rating(message_id=mid, user="admin", rating="up"), trust="trusted")
    assert _state(store, mid)["state"] == "trusted"
    store.record_turn(make_turn("c1", [user("hi")], "Hi there.", replaces=mid, trust="untrusted"))
    row = _state(store, mid)
    assert (row["state"], row["rating"], row["user"]) == ("untrusted", "down", "alice")
    example = next(e for e in store.trainable_examples() if e.message_id == mid)
    assert not example.trusted and example.implicit


def test_a_regenerate_without_a_stated_trust_is_trusted_only_for_whom_the_store_trusts(store):
    for who, trusted in (("bob", False), ("carol", True), ("local", True)):
        if trusted and who != "local":
            store.set_user_trust(who, True, actor="admin")
        first = make_turn(f"c-{who}", [user("hi")], "Hello.", who=who)
        store.record_turn(first)
        store.rate(Rating(message_id=first.assistant_message_id, user="admin", rating="up"), trust="trusted")
        store.record_turn(make_turn(f"c-{who}", [user("hi")], "Hey.", who=who, replaces=first.assistant_message_id))
        assert _state(store, first.assistant_message_id)["state"] == ("trusted" if trusted else "untrusted"), who


def test_a_regenerate_of_a_client_written_answer_is_held(store):
    forged, _ = _forged_turn(store)
    store.record_turn(make_turn("c1", [SYSTEM, user("capital of France?")], "Paris.", replaces=forged,
                                trust="untrusted"))
    assert _state(store, forged)["state"] == "pending_review"


def test_review_after_rating_holds_by_origin_inside_any_transaction(store):
    forged, answer = _forged_turn(store)
    with store._write() as cur:  # the function the rating and the regenerate both call
        review_after_rating(cur, forged, "bob", "untrusted", False, _now())
        review_after_rating(cur, answer, "bob", "untrusted", False, _now())
        states = dict(cur.execute("SELECT message_id, state FROM review").fetchall())
    assert states == {forged: "pending_review", answer: "untrusted"}


def test_a_v10_file_gets_origins_for_the_messages_it_holds(tmp_path):
    path = tmp_path / "v10.duckdb"
    con = duckdb.connect(str(path))
    assert schema.migrate(con, target=10) == 10
    con.execute("INSERT INTO conversations (id, \"user\", created_at) VALUES ('c1', 'alice', TIMESTAMP '2026-01-01')")
    rows = [  # (id, position, role, adapter, sampling): as v10 stored them
        ("s", 0, "system", None, None),
        ("u1", 1, "user", None, None),
        ("forged", 2, "assistant", None, None),
        ("u2", 3, "user", None, None),
        ("free", 4, "assistant", "demo-a", '{"temperature": 0.7, "structured": null}'),
        ("u3", 5, "user", None, None),
        ("forced", 6, "assistant", "demo-a", '{"temperature": 0.7, "structured": "json_schema"}'),
        ("u4", 7, "user", None, None),
        ("old", 8, "assistant", "demo-a", '{"temperature": 0.7}'),
    ]
    for mid, pos, role, adapter, sampling in rows:
        con.execute("""INSERT INTO messages (id, conversation_id, position, role, content, "user", adapter, sampling,
                       created_at) VALUES (?, 'c1', ?, ?, 'x', 'alice', ?, ?, TIMESTAMP '2026-01-01')""",
                    [mid, pos, role, adapter, sampling])
    con.close()
    with FeedbackStore(path) as s:
        origins = s.answer_origins([r[0] for r in rows])
    assert origins == {"s": "client", "u1": "client", "forged": "client", "u2": "client", "free": "model",
                       "u3": "client", "forced": "constrained", "u4": "client", "old": "model"}
    con = duckdb.connect(str(path))
    try:
        assert schema.current_version(con) == schema.LATEST
        assert con.execute("SELECT count(*) FROM messages WHERE origin IS NULL").fetchone()[0] == 0
    finally:
        con.close()


def test_rated_rows_and_the_parquet_export_say_where_each_answer_came_from(store, tmp_path):
    """The Data tab's rows and the Parquet export carry ``origin``; the OpenAI JSONL keeps its fixed schema
    (it has no place for it)."""
    import json

    import pyarrow.parquet as pq

    from feedback.export import export

    forged, answer = _forged_turn(store)
    forced = make_turn("c2", [user("json please")], '{"a": 1}', origin="constrained")
    store.record_turn(forced)
    for mid in (forged, answer, forced.assistant_message_id):
        store.rate(Rating(message_id=mid, user="admin", rating="up"), trust="trusted")
    expected = {forged: "client", answer: "model", forced.assistant_message_id: "constrained"}

    assert {r["message_id"]: r["origin"] for r in store.rated_conversations()} == expected

    export(store, tmp_path / "all.parquet", "parquet")
    rows = pq.read_table(tmp_path / "all.parquet").to_pylist()
    assert {r["message_id"]: r["origin"] for r in rows if r["message_id"] in expected} == expected
    assert {r["origin"] for r in rows if r["role"] != "assistant"} == {"client"}

    export(store, tmp_path / "all.jsonl", "openai")
    lines = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert lines and all(set(r) == {"messages"} and all(set(m) == {"role", "content"} for m in r["messages"])
                         for r in lines)
