"""Turns accepted but not yet in DuckDB when the process died are replayed from the journal at start."""

from __future__ import annotations

import json
from dataclasses import asdict

from feedback.models import TurnRecord
from feedback.store import FeedbackStore


def turn(i: int) -> TurnRecord:
    return TurnRecord(conversation_id=f"c{i}", user="u", request_messages=[{"role": "user", "content": f"q{i}"}],
                      assistant_message_id=f"m{i}", answer=f"a{i}", adapter="base", base_model="demo", sampling={},
                      latency_ms=1.0, first_token_ms=1.0, prompt_tokens=1, completion_tokens=1)


def test_journaled_turns_are_replayed_once(tmp_path):
    db = tmp_path / "t.duckdb"
    with FeedbackStore(db) as store:
        store.record_turn(turn(0))  # stored normally
    # As a process killed after journaling m0..m2 but before its writer stored m1, m2 (and a torn last line).
    journal = db.with_name(db.name + ".turns.jsonl")
    lines = [json.dumps(asdict(turn(i))) for i in range(3)]
    journal.write_text("\n".join(lines) + "\n" + lines[0][: len(lines[0]) // 2])
    with FeedbackStore(db) as store:
        assert [store.get_message(f"m{i}").content for i in range(3)] == ["a0", "a1", "a2"]
        assert store.stats()["totals"]["assistant_messages"] == 3  # m0 not stored twice
    assert journal.read_text() == ""  # applied, so started over
