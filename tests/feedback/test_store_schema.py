"""Migrations: an empty file goes to the latest version; a v1 file with data is upgraded, data kept."""

from __future__ import annotations

import duckdb
import pytest

from feedback import schema
from feedback.errors import SchemaTooNew
from feedback.models import Rating
from feedback.store import FeedbackStore


def _tables(path) -> set[str]:
    con = duckdb.connect(str(path))
    try:
        return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()


def test_empty_file_migrates_to_latest(tmp_path):
    path = tmp_path / "new.duckdb"
    with FeedbackStore(path):
        pass
    con = duckdb.connect(str(path))
    try:
        assert schema.current_version(con) == schema.LATEST >= 2
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()]
    finally:
        con.close()
    assert versions == [number for number, _ in schema.MIGRATIONS]  # numbers are reserved per branch: gaps are fine
    assert {"conversations", "messages", "ratings", "corrections", "runs", "embeddings"} <= _tables(path)
    # Opening again applies nothing and keeps the version.
    with FeedbackStore(path) as s:
        assert s.production() == "base"


def test_v1_file_with_data_upgrades_and_keeps_it(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    assert schema.migrate(con, target=1) == 1
    # Rows as the v1 app wrote them, through plain SQL: the v2 store code must not be needed to make them.
    con.execute("INSERT INTO conversations VALUES ('c1', 'alice', TIMESTAMP '2025-01-02 03:04:05')")
    con.execute("""INSERT INTO messages (id, conversation_id, position, role, content, "user", created_at)
                   VALUES ('u1', 'c1', 0, 'user', 'hi', 'alice', TIMESTAMP '2025-01-02 03:04:05')""")
    con.execute("""INSERT INTO messages (id, conversation_id, position, role, content, "user", adapter, created_at)
                   VALUES ('a1', 'c1', 1, 'assistant', 'hello', 'alice', 'demo-a', TIMESTAMP '2025-01-02 03:04:06')""")
    con.execute("INSERT INTO ratings VALUES ('a1', 'alice', 'up', 'nice', false, TIMESTAMP '2025-01-02 03:05:00')")
    con.close()
    assert "corrections" not in _tables(path)

    with FeedbackStore(path) as s:
        history = s.conversation("c1")
        assert [(m.role, m.content) for m in history] == [("user", "hi"), ("assistant", "hello")]
        assert history[1].created_at.tzinfo is not None and history[1].created_at.hour == 3
        [example] = s.rated_examples()
        assert (example.message_id, example.rating, example.prompt) == ("a1", "up", [{"role": "user", "content": "hi"}])
        # The v2 parts work on the upgraded file.
        s.rate(Rating(message_id="a1", user="bob", rating="down", correction="Hello!"))
        assert s.stats()["totals"]["corrections"] == 1
    con = duckdb.connect(str(path))
    try:
        assert schema.current_version(con) == schema.LATEST
    finally:
        con.close()


def test_failed_migration_leaves_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "x.duckdb"
    con = duckdb.connect(str(path))
    schema.migrate(con, target=1)
    broken = [*schema.MIGRATIONS, (schema.LATEST + 1, ["CREATE TABLE extra (x INT)", "THIS IS NOT SQL"])]
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    monkeypatch.setattr(schema, "LATEST", schema.LATEST + 1)
    with pytest.raises(duckdb.Error):
        schema.migrate(con)
    assert schema.current_version(con) == 1  # v2 and the broken v3 rolled back together
    con.close()
    assert "extra" not in _tables(path) and "corrections" not in _tables(path)


def test_newer_file_is_refused(tmp_path):
    path = tmp_path / "future.duckdb"
    with FeedbackStore(path):
        pass
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [schema.LATEST + 1])
    con.close()
    with pytest.raises(SchemaTooNew):
        FeedbackStore(path)
