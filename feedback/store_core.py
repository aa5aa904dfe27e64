"""The core every part of FeedbackStore shares: one DuckDB connection, its write lock, the turn journal.

Concurrency: one DuckDB connection per process; each call works on its own ``cursor()`` (DuckDB's
thread-safe handle). Writes are serialized by a lock, because DuckDB's optimistic concurrency
control raises on write-write conflicts instead of waiting. Each write method is one transaction,
committed before it returns: DuckDB appends the commit to its write-ahead log and syncs it then,
so an acknowledged write survives ``kill -9`` (tests/feedback/test_durability.py); ``close()``
checkpoints the log into the file. Chat turns are the exception that keeps chat fast: they are
journaled and applied in batches by one thread (``feedback/turn_queue.py`` says why and how), and
every read of messages first waits for the turns submitted before it.

Times: stored as naive UTC ``TIMESTAMP``, handed out as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from feedback.models import Message
from feedback.schema import migrate
from feedback.turn_queue import TurnQueue

log = logging.getLogger(__name__)


BASE = "base"  # same name as serving.types.BASE; not imported so the store never pulls in serving/
MAX_TEXT_CHARS = 20_000  # longest comment or correction accepted
RATINGS = ("up", "down")
# Why an answer got a thumbs-down: short, fixed, so the Data tab and exports can count them.
RATING_REASONS = ("wrong", "unhelpful", "unsafe", "too_long", "other")
WINNERS = ("a", "b", "tie", "both_bad")
# The arena vote that counts (v: arena_votes, b: battles), on the leaderboard and in the daily wins: the battle
# owner's. Files from before the store refused other voters may also hold an admin's vote on a user's battle.
OWNER_VOTE = 'v."user" = b."user"'
RUN_STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "skipped")
_RUN_FIELDS = {"status", "stage", "step", "total_steps", "loss", "eta_s", "snapshot_id", "adapter",
               "parent_adapter", "gate", "error", "cutoff", "started_at", "finished_at", "attempts"}
_JSON_RUN_FIELDS = {"settings", "gate", "attempts"}

_MESSAGE_COLUMNS = ("id", "conversation_id", "position", "role", "content", "user", "created_at", "adapter",
                    "base_model", "sampling", "latency_ms", "first_token_ms", "prompt_tokens",
                    "completion_tokens", "finish_reason", "experiment_id", "arm", "replaces", "superseded")
_MESSAGE_SELECT = ", ".join(f'"{c}"' for c in _MESSAGE_COLUMNS)

_FAR_PAST = datetime(1970, 1, 1)
_FAR_FUTURE = datetime(9999, 1, 1)


def new_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _to_db(dt: datetime | None) -> datetime | None:
    """Naive UTC for storage; a naive input is taken to be UTC already."""
    if dt is None or dt.tzinfo is None:
        return dt
    return dt.astimezone(UTC).replace(tzinfo=None)


def _from_db(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=UTC)


def _loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def upsert(cur: duckdb.DuckDBPyConnection, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
    """Insert a row, or set ``values`` on the row with ``key``: ``INSERT ... ON CONFLICT DO UPDATE``'s effect.

    Why not ON CONFLICT: on DuckDB 2.0 it took 6-7 ms of CPU a row against ~2 ms for a plain UPDATE or
    INSERT (2026-12-03, 2 cores), and every thumb ran two or three, so ratings were the server's largest
    cost after generation under ``bench/load.py``. Only inside ``_write()``: writes are serialized by the
    store's lock, so no other transaction can insert ``key`` between the two statements. Table and column
    names are this package's own, never user input.
    """
    where = " AND ".join(f'"{k}" = ?' for k in key)
    sets = ", ".join(f'"{k}" = ?' for k in values)
    (updated,) = cur.execute(f"UPDATE {table} SET {sets} WHERE {where}", [*values.values(), *key.values()]).fetchone()
    if not updated:
        columns = ", ".join(f'"{c}"' for c in [*key, *values])
        cur.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * (len(key) + len(values)))})",
                    [*key.values(), *values.values()])


def _aware(row: dict, *keys: str) -> dict:
    for k in keys:
        row[k] = _from_db(row[k])
    return row


def _same(stored: list[dict], request: list[Message]) -> bool:
    """Whether stored messages are exactly a prefix of the request (role and content)."""
    return len(stored) <= len(request) and all(
        s["role"] == r["role"] and s["content"] == r["content"] for s, r in zip(stored, request, strict=False))


class StoreCore:
    """The DuckDB connection, its write lock, the turn journal and the read/write cursors."""

    _judged = 0  # ratings, corrections and forgets stored by this process: a change voids cached stats
    _stats_cache: tuple | None = None  # (monotonic time, _judged then, stats) of RatingStore.stats

    def _note_judged(self) -> None:
        self._judged += 1

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path))
        self._lock = threading.Lock()
        try:
            version = migrate(self._con)
        except BaseException:
            self._con.close()
            raise
        self._turns = TurnQueue(self.path.with_name(self.path.name + ".turns.jsonl"), self._apply_turns)
        self._replay_journal()
        self._turns.start()
        log.info("feedback store open path=%s schema=v%d", self.path, version)

    def _replay_journal(self) -> None:
        """Store turns a crashed process had accepted but not yet written into DuckDB."""
        journaled = self._turns.pending_from_journal()
        if not journaled:
            return
        with self._read() as cur:
            ids = [t.assistant_message_id for t in journaled]
            present = {r[0] for r in cur.execute("SELECT id FROM messages WHERE id IN (SELECT unnest(?))",
                                                  [ids]).fetchall()}
        missing = [t for t in journaled if t.assistant_message_id not in present]
        if missing:
            self._apply_turns(missing)
        log.info("journal replayed: %d turns, %d were missing from the database", len(journaled), len(missing))

    def limit_memory(self, megabytes: int) -> None:
        """Cap DuckDB's memory (cached blocks, sorts, joins) for this process; past it DuckDB spills to disk.

        For one-shot processes such as the export command, whose peak should not grow with the file.
        """
        self._con.execute(f"SET memory_limit = '{int(megabytes)}MB'")

    def close(self) -> None:
        """Store pending turns, checkpoint the write-ahead log into the file and close."""
        self._turns.close()
        with self._lock:
            self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _read(self, settle: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for reading; ``settle`` first waits until turns submitted so far are stored."""
        if settle:
            self._turns.wait()
        cur = self._con.cursor()
        try:
            yield cur
        finally:
            cur.close()

    @contextmanager
    def _write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One serialized transaction, committed when the block ends."""
        with self._lock:
            cur = self._con.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            finally:
                cur.close()

