"""Builders of chat turns and registry states shared by the store tests (and the app tests)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from feedback.models import TurnRecord

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def make_turn(conversation_id: str, messages: list[dict], answer: str, *, who: str = "alice", adapter: str = "demo-a",
              message_id: str | None = None, **extra) -> TurnRecord:
    return TurnRecord(
        conversation_id=conversation_id, user=who, request_messages=messages,
        assistant_message_id=message_id or uuid.uuid4().hex, answer=answer, adapter=adapter, base_model="tiny",
        sampling={"temperature": 0.7, "top_p": 0.95}, latency_ms=12.5, first_token_ms=3.0, prompt_tokens=7,
        completion_tokens=5, finish_reason="stop", **extra)


def write_production_alias(db_path: Path, previous: str | None = None) -> None:
    """Leave the registry as ``set_production("production")`` did before the store refused it: the pointer
    names the alias, and when production was ``previous``, that one is retired and the switch is the newest event.
    The store must be closed."""
    import duckdb

    con = duckdb.connect(str(db_path))
    try:
        con.execute("""INSERT INTO pointers VALUES ('production', 'production')
                       ON CONFLICT (name) DO UPDATE SET value = excluded.value""")
        if previous:
            con.execute("UPDATE adapters SET status = 'retired' WHERE name = ?", [previous])
            con.execute("INSERT INTO adapter_events VALUES (?, ?, 'admin', 'promote', ?, 'production', 'old bug')",
                        [uuid.uuid4().hex, datetime.now(UTC).replace(tzinfo=None), previous])
    finally:
        con.close()
