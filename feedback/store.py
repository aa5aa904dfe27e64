"""FeedbackStore: the one owner of the DuckDB file; every SQL statement of Tuneloop lives in feedback/.

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

import gc
import json
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from feedback.errors import (
    AlreadyVoted,
    InvalidRating,
    NotAssistantMessage,
    UnknownBattle,
    UnknownMessage,
    UnknownRun,
)
from feedback.models import (
    AdapterRecord,
    ArenaVote,
    Battle,
    Experiment,
    Message,
    PreferencePair,
    RatedExample,
    Rating,
    StoredMessage,
    TurnRecord,
)
from feedback.schema import migrate
from feedback.turn_queue import TurnQueue

log = logging.getLogger(__name__)

BASE = "base"  # same name as serving.types.BASE; not imported so the store never pulls in serving/
MAX_TEXT_CHARS = 20_000  # longest comment or correction accepted
RATINGS = ("up", "down")
WINNERS = ("a", "b", "tie", "both_bad")
RUN_STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "skipped")
_RUN_FIELDS = {"status", "stage", "step", "total_steps", "loss", "eta_s", "snapshot_id", "adapter",
               "parent_adapter", "gate", "error", "cutoff", "started_at", "finished_at"}
_JSON_RUN_FIELDS = {"settings", "gate"}

_MESSAGE_COLUMNS = ("id", "conversation_id", "position", "role", "content", "user", "created_at", "adapter",
                    "base_model", "sampling", "latency_ms", "first_token_ms", "prompt_tokens",
                    "completion_tokens", "finish_reason", "experiment_id", "arm", "replaces", "superseded")
_MESSAGE_SELECT = ", ".join(f'"{c}"' for c in _MESSAGE_COLUMNS)

# Latest rating and latest correction per assistant message (by anyone), and when it was last judged.
_RATED_SQL = """
WITH lr AS (
    SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, "user") AS rn FROM ratings),
lc AS (
    SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, "user") AS rn FROM corrections),
t AS (
    SELECT m.id, m.conversation_id, m.position, m.seq, m.content, m.adapter,
           r.rating, r."user" AS rating_user, coalesce(r.implicit, false) AS implicit,
           c.content AS correction, c."user" AS correction_user,
           greatest(coalesce(r.created_at, c.created_at), coalesce(c.created_at, r.created_at)) AS rated_at
    FROM messages m
    LEFT JOIN lr r ON r.message_id = m.id AND r.rn = 1
    LEFT JOIN lc c ON c.message_id = m.id AND c.rn = 1
    WHERE m.role = 'assistant' AND (r.message_id IS NOT NULL OR c.message_id IS NOT NULL))
SELECT * FROM t WHERE rated_at >= ? AND rated_at < ?
"""

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


def _aware(row: dict, *keys: str) -> dict:
    for k in keys:
        row[k] = _from_db(row[k])
    return row


def _same(stored: list[dict], request: list[Message]) -> bool:
    """Whether stored messages are exactly a prefix of the request (role and content)."""
    return len(stored) <= len(request) and all(
        s["role"] == r["role"] and s["content"] == r["content"] for s, r in zip(stored, request, strict=False))


class FeedbackStore:
    """Conversations, ratings, corrections, arena votes, experiments, adapters, runs and caches."""

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

    def close(self) -> None:
        """Store pending turns, checkpoint the write-ahead log into the file and close."""
        self._turns.close()
        with self._lock:
            self._con.close()

    def __enter__(self) -> FeedbackStore:
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

    # --- conversations -------------------------------------------------------------------------
    def record_turn(self, turn: TurnRecord) -> None:
        """Accept one answered turn: journaled at once, in DuckDB within milliseconds (see the module doc).

        A regenerate naming an unknown or non-assistant message is refused here, synchronously.
        """
        if turn.replaces:
            replaced = self.get_message(turn.replaces)
            if replaced is None:
                raise UnknownMessage(f"unknown message {turn.replaces!r} (regenerate)")
            if replaced.role != "assistant":
                raise NotAssistantMessage(f"message {turn.replaces!r} is not an assistant answer")
        self._turns.submit(turn)

    def _apply_turns(self, turns: list[TurnRecord]) -> None:
        """Store a batch of turns in one transaction; if it fails, one by one so one bad turn loses no other."""
        try:
            with self._write() as cur:
                fresh, rest = self._split_fresh(cur, turns)
                self._insert_fresh(cur, fresh)
                for turn in rest:
                    self._apply_turn(cur, turn)
            return
        except Exception:
            if len(turns) == 1:
                raise
        for turn in turns:
            try:
                with self._write() as cur:
                    self._apply_turn(cur, turn)
            except Exception:
                log.exception("turn %s could not be stored", turn.assistant_message_id)

    @staticmethod
    def _split_fresh(cur, turns: list[TurnRecord]) -> tuple[list[TurnRecord], list[TurnRecord]]:
        """Turns that open a conversation not stored yet (most API turns) can be inserted in bulk."""
        ids = [t.conversation_id for t in turns]
        known = {r[0] for r in cur.execute("SELECT id FROM conversations WHERE id IN (SELECT unnest(?))",
                                           [ids]).fetchall()}
        seen: set[str] = set()
        fresh, rest = [], []
        for t in turns:
            if t.replaces is None and t.conversation_id not in known and t.conversation_id not in seen:
                fresh.append(t)
            else:
                rest.append(t)
            seen.add(t.conversation_id)
        return fresh, rest

    @staticmethod
    def _insert_fresh(cur, turns: list[TurnRecord]) -> None:
        """Two bulk inserts for a batch of new conversations: a statement costs ~1 ms from Python, a row ~10 µs."""
        if not turns:
            return
        import pyarrow as pa  # only needed on this path; keeps `import feedback.store` light

        now = _now()
        conversations = pa.table({"id": [t.conversation_id for t in turns], "user": [t.user for t in turns],
                                  "created_at": pa.array([now] * len(turns), pa.timestamp("us"))})
        cols: dict[str, list] = {c: [] for c in (
            "id", "conversation_id", "position", "role", "content", "user", "adapter", "base_model", "sampling",
            "latency_ms", "first_token_ms", "prompt_tokens", "completion_tokens", "finish_reason",
            "experiment_id", "arm")}
        for t in turns:
            rows = [(m["role"], m["content"], {}) for m in t.request_messages]
            rows.append(("assistant", t.answer, {
                "adapter": t.adapter, "base_model": t.base_model, "sampling": json.dumps(t.sampling),
                "latency_ms": t.latency_ms, "first_token_ms": t.first_token_ms, "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens, "finish_reason": t.finish_reason,
                "experiment_id": t.experiment_id, "arm": t.arm}))
            for position, (role, content, facts) in enumerate(rows):
                is_answer = position == len(rows) - 1
                cols["id"].append(t.assistant_message_id if is_answer else new_id())
                cols["conversation_id"].append(t.conversation_id)
                cols["position"].append(position)
                cols["role"].append(role)
                cols["content"].append(content)
                cols["user"].append(t.user)
                for k in ("adapter", "base_model", "sampling", "latency_ms", "first_token_ms", "prompt_tokens",
                          "completion_tokens", "finish_reason", "experiment_id", "arm"):
                    cols[k].append(facts.get(k))
        messages = pa.table({**cols, "position": pa.array(cols["position"], pa.int32()),
                             "latency_ms": pa.array(cols["latency_ms"], pa.float64()),
                             "first_token_ms": pa.array(cols["first_token_ms"], pa.float64()),
                             "prompt_tokens": pa.array(cols["prompt_tokens"], pa.int32()),
                             "completion_tokens": pa.array(cols["completion_tokens"], pa.int32()),
                             "created_at": pa.array([now] * len(cols["id"]), pa.timestamp("us"))})
        cur.register("fresh_conversations", conversations)
        cur.register("fresh_messages", messages)
        try:
            cur.execute('INSERT INTO conversations (id, "user", created_at) SELECT * FROM fresh_conversations')
            # Row order of the insert gives seq its order, so positions stay ordered within a conversation.
            cur.execute("INSERT INTO messages BY NAME SELECT * FROM fresh_messages")
        finally:
            cur.unregister("fresh_conversations")
            cur.unregister("fresh_messages")

    def _apply_turn(self, cur, turn: TurnRecord) -> None:
        """Store one answered turn: the conversation, its new messages and the answer.

        The stored (live) messages of a conversation must be a prefix of ``turn.request_messages``.
        When they are not (the client edited history), the turn continues in a branch: a conversation
        with id ``<id>.<n>`` and ``parent_id`` = the given id; later turns with the same history find
        that branch again. A regenerate (``turn.replaces``) stores the new answer at the replaced
        answer's position, marks the replaced answer and everything after it superseded, and records
        an implicit thumbs-down by ``turn.user`` unless that user already rated it. A regenerate whose
        history does not match the replaced answer's still supersedes it, and is stored like any turn.
        """
        now = _now()
        request = [{"role": m["role"], "content": m["content"]} for m in turn.request_messages]
        replaced = None
        if turn.replaces:
            replaced = self._message_row(cur, turn.replaces)
            if replaced is None:
                raise UnknownMessage(f"unknown message {turn.replaces!r} (regenerate)")
            if replaced["role"] != "assistant":
                raise NotAssistantMessage(f"message {turn.replaces!r} is not an assistant answer")
        conversation_id, position = None, None
        if replaced is not None:
            before = self._live(cur, replaced["conversation_id"], below=replaced["position"])
            if len(before) == len(request) and _same(before, request):
                conversation_id, position = replaced["conversation_id"], replaced["position"]
                cur.execute("UPDATE messages SET superseded = true WHERE conversation_id = ? AND position >= ?",
                            [conversation_id, position])
            cur.execute("UPDATE messages SET superseded = true WHERE id = ?", [replaced["id"]])
            cur.execute("""INSERT INTO ratings VALUES (?, ?, 'down', NULL, true, ?)
                           ON CONFLICT (message_id, "user") DO NOTHING""", [replaced["id"], turn.user, now])
        if conversation_id is None:
            conversation_id, stored = self._conversation_for(cur, turn.conversation_id, turn.user, request, now)
            for i in range(stored, len(request)):
                self._insert_message(cur, id=new_id(), conversation_id=conversation_id, position=i,
                                     role=request[i]["role"], content=request[i]["content"], user=turn.user,
                                     created_at=now)
            position = len(request)
        self._insert_message(
            cur, id=turn.assistant_message_id, conversation_id=conversation_id, position=position,
            role="assistant", content=turn.answer, user=turn.user, created_at=now, adapter=turn.adapter,
            base_model=turn.base_model, sampling=json.dumps(turn.sampling), latency_ms=turn.latency_ms,
            first_token_ms=turn.first_token_ms, prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens, finish_reason=turn.finish_reason,
            experiment_id=turn.experiment_id, arm=turn.arm, replaces=turn.replaces)

    def _conversation_for(self, cur, root: str, user: str, request: list[Message], now: datetime) -> tuple[str, int]:
        """(conversation id, number of request messages already stored) for a turn's history."""
        exists = cur.execute("SELECT 1 FROM conversations WHERE id = ?", [root]).fetchone()
        if not exists:
            cur.execute('INSERT INTO conversations (id, "user", created_at) VALUES (?, ?, ?)', [root, user, now])
            return root, 0
        branches = [r[0] for r in cur.execute(
            "SELECT id FROM conversations WHERE parent_id = ? ORDER BY created_at, id", [root]).fetchall()]
        for cid in [root, *branches]:
            live = self._live(cur, cid)
            if _same(live, request):
                return cid, len(live)
        branch = f"{root}.{len(branches) + 1}"
        cur.execute('INSERT INTO conversations (id, "user", created_at, parent_id) VALUES (?, ?, ?, ?)',
                    [branch, user, now, root])
        log.info("conversation %s branched to %s (history differs from what is stored)", root, branch)
        return branch, 0

    @staticmethod
    def _live(cur, conversation_id: str, below: int | None = None) -> list[dict]:
        cur.execute("""SELECT role, content FROM messages WHERE conversation_id = ? AND NOT superseded
                       AND position < coalesce(?, 2147483647) ORDER BY position""", [conversation_id, below])
        return _rows(cur)

    @staticmethod
    def _insert_message(cur, **cols: Any) -> None:
        names = ", ".join(f'"{k}"' for k in cols)
        cur.execute(f"INSERT INTO messages ({names}) VALUES ({', '.join('?' * len(cols))})", list(cols.values()))

    @staticmethod
    def _message_row(cur, message_id: str) -> dict | None:
        cur.execute(f"SELECT {_MESSAGE_SELECT} FROM messages WHERE id = ?", [message_id])
        rows = _rows(cur)
        return rows[0] if rows else None

    @staticmethod
    def _stored_message(row: dict) -> StoredMessage:
        row = dict(row)
        row["sampling"] = _loads(row["sampling"])
        row["created_at"] = _from_db(row["created_at"])
        return StoredMessage(**row)

    def get_message(self, message_id: str) -> StoredMessage | None:
        with self._read(settle=True) as cur:
            row = self._message_row(cur, message_id)
        return None if row is None else self._stored_message(row)

    def conversation(self, conversation_id: str, include_superseded: bool = False) -> list[StoredMessage]:
        """The conversation's messages in order; superseded (regenerated) answers only when asked."""
        with self._read(settle=True) as cur:
            cur.execute(f"""SELECT {_MESSAGE_SELECT} FROM messages WHERE conversation_id = ?
                            AND (? OR NOT superseded) ORDER BY position, seq""",
                        [conversation_id, include_superseded])
            return [self._stored_message(r) for r in _rows(cur)]

    # --- ratings -------------------------------------------------------------------------------
    def rate(self, rating: Rating) -> Rating:
        """Store (or replace) ``rating.user``'s rating of an assistant answer, and its correction if any."""
        if rating.rating not in RATINGS:
            raise InvalidRating(f"rating must be one of {RATINGS}, not {rating.rating!r}")
        if rating.comment is not None and len(rating.comment) > MAX_TEXT_CHARS:
            raise InvalidRating(f"comment longer than {MAX_TEXT_CHARS} characters")
        if rating.correction is not None:
            if not rating.correction.strip():
                raise InvalidRating("correction is empty")
            if len(rating.correction) > MAX_TEXT_CHARS:
                raise InvalidRating(f"correction longer than {MAX_TEXT_CHARS} characters")
        now = _now()
        self._turns.wait()  # the answer being rated may have been stored a moment ago
        with self._write() as cur:
            row = cur.execute("SELECT role FROM messages WHERE id = ?", [rating.message_id]).fetchone()
            if row is None:
                raise UnknownMessage(f"unknown message {rating.message_id!r}")
            if row[0] != "assistant":
                raise NotAssistantMessage(f"message {rating.message_id!r} is a {row[0]} message; rate answers")
            cur.execute("""INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?)
                           ON CONFLICT (message_id, "user") DO UPDATE SET rating = excluded.rating,
                           comment = excluded.comment, implicit = excluded.implicit, created_at = excluded.created_at""",
                        [rating.message_id, rating.user, rating.rating, rating.comment, rating.implicit, now])
            if rating.correction is not None:
                cur.execute("""INSERT INTO corrections VALUES (?, ?, ?, ?)
                               ON CONFLICT (message_id, "user") DO UPDATE SET content = excluded.content,
                               created_at = excluded.created_at""",
                            [rating.message_id, rating.user, rating.correction, now])
        log.info("rating stored message=%s user=%s rating=%s correction=%s", rating.message_id, rating.user,
                 rating.rating, rating.correction is not None)
        return Rating(message_id=rating.message_id, user=rating.user, rating=rating.rating, comment=rating.comment,
                      correction=rating.correction, implicit=rating.implicit, created_at=_from_db(now))

    def stats(self) -> dict:
        """Totals, per adapter and per day. Implicit thumbs-down (from regenerates) count as downs."""
        with self._read(settle=True) as cur:
            totals = _rows(cur.execute("""
                SELECT (SELECT count(*) FROM messages) AS messages,
                       (SELECT count(*) FROM messages WHERE role = 'assistant') AS assistant_messages,
                       (SELECT count(DISTINCT message_id) FROM ratings) AS rated_messages,
                       (SELECT count(*) FROM ratings WHERE rating = 'up') AS up,
                       (SELECT count(*) FROM ratings WHERE rating = 'down') AS down,
                       (SELECT count(*) FROM corrections) AS corrections"""))[0]
            per_adapter = _rows(cur.execute(_PER_ADAPTER_SQL))
            per_day = _rows(cur.execute("""
                SELECT strftime(day, '%Y-%m-%d') AS day, sum(messages)::BIGINT AS messages,
                       count(DISTINCT rated)::BIGINT AS rated, sum(up)::BIGINT AS up, sum(down)::BIGINT AS down,
                       sum(corrections)::BIGINT AS corrections
                FROM (SELECT created_at::DATE AS day, 1 AS messages, 0 AS up, 0 AS down, 0 AS corrections,
                             NULL AS rated FROM messages
                      UNION ALL
                      SELECT created_at::DATE, 0, (rating = 'up')::INT, (rating = 'down')::INT, 0, message_id
                      FROM ratings
                      UNION ALL
                      SELECT created_at::DATE, 0, 0, 0, 1, message_id FROM corrections)
                GROUP BY day ORDER BY day"""))
        return {"totals": totals, "per_adapter": per_adapter, "per_day": per_day}

    def rated_conversations(self, adapter: str | None = None, rating: str | None = None, user: str | None = None,
                            since: datetime | None = None, until: datetime | None = None,
                            has_correction: bool | None = None, limit: int = 200) -> list[dict]:
        """One row per (answer, rater), newest first, for the admin Data tab."""
        with self._read(settle=True) as cur:
            cur.execute("""
                SELECT m.id AS message_id, m.conversation_id, r."user", m.adapter, m.position, m.seq,
                       m.content AS answer, r.rating, r.implicit, r.comment, c.content AS correction, r.created_at
                FROM ratings r JOIN messages m ON m.id = r.message_id
                LEFT JOIN corrections c ON c.message_id = r.message_id AND c."user" = r."user"
                WHERE (?::VARCHAR IS NULL OR m.adapter = ?) AND (?::VARCHAR IS NULL OR r.rating = ?)
                  AND (?::VARCHAR IS NULL OR r."user" = ?)
                  AND r.created_at >= ? AND r.created_at < ?
                  AND (?::BOOLEAN IS NULL OR (c.content IS NOT NULL) = ?)
                ORDER BY r.created_at DESC, m.id LIMIT ?""",
                        [adapter, adapter, rating, rating, user, user, _to_db(since) or _FAR_PAST,
                         _to_db(until) or _FAR_FUTURE, has_correction, has_correction, limit])
            rows = _rows(cur)
            prompts = self._prompts(cur, rows)
        out = []
        for row, prompt in zip(rows, prompts, strict=True):
            last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            out.append({"message_id": row["message_id"], "conversation_id": row["conversation_id"],
                        "user": row["user"], "adapter": row["adapter"], "prompt": last_user, "answer": row["answer"],
                        "rating": row["rating"], "implicit": row["implicit"], "comment": row["comment"],
                        "correction": row["correction"], "created_at": _from_db(row["created_at"])})
        return out

    @staticmethod
    def _prompts(cur, targets: list[dict]) -> list[list[Message]]:
        """For each target answer (conversation_id, position, seq): the conversation as it stood then.

        That is, per earlier position the latest message stored before the answer: for a live answer
        this is the conversation without superseded messages; for a regenerated (superseded) answer it
        is the history that answer was actually generated from.
        """
        ids = sorted({t["conversation_id"] for t in targets})
        if not ids:
            return []
        cur.execute("""SELECT conversation_id, position, seq, role, content FROM messages
                       WHERE conversation_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY position, seq""", [ids])
        by_conversation: dict[str, list[tuple]] = defaultdict(list)
        for cid, position, seq, role, content in cur.fetchall():
            by_conversation[cid].append((position, seq, role, content))
        prompts = []
        for t in targets:
            chosen: dict[int, Message] = {}
            for position, seq, role, content in by_conversation[t["conversation_id"]]:
                if position < t["position"] and seq < t["seq"]:
                    chosen[position] = {"role": role, "content": content}  # rows are in seq order
            prompts.append([chosen[p] for p in sorted(chosen)])
        return prompts

    def rated_examples(self, since: datetime | None = None, until: datetime | None = None) -> list[RatedExample]:
        """Assistant answers rated or corrected in [since, until), with the conversation before each.

        ``rating``/``correction`` are the latest by anyone; ``user`` is who gave the latest rating
        (or correction, when there is no rating).
        """
        with self._read(settle=True) as cur:
            cur.execute(_RATED_SQL + " ORDER BY rated_at, id", [_to_db(since) or _FAR_PAST, _to_db(until) or _FAR_FUTURE])
            rows = _rows(cur)
            prompts = self._prompts(cur, rows)
        return [RatedExample(message_id=r["id"], conversation_id=r["conversation_id"],
                             user=r["rating_user"] or r["correction_user"], adapter=r["adapter"], prompt=prompt,
                             answer=r["content"], rating=r["rating"], correction=r["correction"],
                             implicit=bool(r["implicit"]), rated_at=_from_db(r["rated_at"]))
                for r, prompt in zip(rows, prompts, strict=True)]

    def new_rated_count(self, since: datetime | None) -> int:
        """How many answers were rated or corrected at or after ``since`` (all when None)."""
        with self._read(settle=True) as cur:
            return cur.execute(f"SELECT count(*) FROM ({_RATED_SQL})",
                               [_to_db(since) or _FAR_PAST, _FAR_FUTURE]).fetchone()[0]

    def preference_pairs(self, since: datetime | None = None, until: datetime | None = None) -> list[PreferencePair]:
        """Corrections (chosen = correction, rejected = the answer) and decisive arena votes (a or b)."""
        window = [_to_db(since) or _FAR_PAST, _to_db(until) or _FAR_FUTURE]
        with self._read(settle=True) as cur:
            cur.execute("""SELECT m.conversation_id, m.position, m.seq, m.content, c."user", c.content AS correction,
                                  c.created_at
                           FROM corrections c JOIN messages m ON m.id = c.message_id
                           WHERE c.created_at >= ? AND c.created_at < ? ORDER BY c.created_at, m.id""", window)
            corrections = _rows(cur)
            prompts = self._prompts(cur, corrections)
            cur.execute("""SELECT b.id, b.prompt, b.answer_a, b.answer_b, v."user", v.winner, v.created_at
                           FROM arena_votes v JOIN battles b ON b.id = v.battle_id
                           WHERE v.winner IN ('a', 'b') AND v.created_at >= ? AND v.created_at < ?
                           ORDER BY v.created_at, b.id""", window)
            votes = _rows(cur)
        pairs = [PreferencePair(prompt=p, chosen=c["correction"], rejected=c["content"], source="correction",
                                conversation_id=c["conversation_id"], user=c["user"],
                                created_at=_from_db(c["created_at"]))
                 for c, p in zip(corrections, prompts, strict=True)]
        for v in votes:
            win, lose = (v["answer_a"], v["answer_b"]) if v["winner"] == "a" else (v["answer_b"], v["answer_a"])
            pairs.append(PreferencePair(prompt=json.loads(v["prompt"]), chosen=win, rejected=lose, source="arena",
                                        conversation_id=v["id"], user=v["user"], created_at=_from_db(v["created_at"])))
        return pairs

    def export_table(self, since: datetime | None = None, rated_only: bool = False):
        """Every message of the selected conversations, with judgements, as a pyarrow Table (for export).

        Selected: conversations with a message at or after ``since``; with ``rated_only``, only those
        with at least one rated or corrected answer. ``rating``/``comment``/``correction`` are the latest
        by anyone; ``ups``/``downs`` count all raters (implicit downs included).
        """
        with self._read(settle=True) as cur:
            return cur.sql("""
                WITH lr AS (SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, "user") rn
                            FROM ratings),
                     lc AS (SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, "user") rn
                            FROM corrections),
                     counts AS (SELECT message_id, count(*) FILTER (rating = 'up') AS ups,
                                       count(*) FILTER (rating = 'down') AS downs FROM ratings GROUP BY message_id),
                     picked AS (SELECT DISTINCT conversation_id FROM messages WHERE created_at >= ?
                                INTERSECT
                                SELECT DISTINCT m.conversation_id FROM messages m
                                WHERE NOT ? OR m.id IN (SELECT message_id FROM ratings UNION SELECT message_id FROM corrections))
                SELECT m.id AS message_id, m.conversation_id, cv.parent_id AS parent_conversation_id, m.position,
                       m.role, m.content, m."user", m.adapter, m.base_model, m.superseded, m.replaces,
                       m.experiment_id, m.arm, m.created_at, r.rating, r.implicit, r.comment,
                       coalesce(n.ups, 0) AS ups, coalesce(n.downs, 0) AS downs, c.content AS correction,
                       c."user" AS corrected_by
                FROM messages m JOIN picked p ON p.conversation_id = m.conversation_id
                JOIN conversations cv ON cv.id = m.conversation_id
                LEFT JOIN lr r ON r.message_id = m.id AND r.rn = 1
                LEFT JOIN lc c ON c.message_id = m.id AND c.rn = 1
                LEFT JOIN counts n ON n.message_id = m.id
                ORDER BY m.conversation_id, m.position, m.seq""",
                           params=[_to_db(since) or _FAR_PAST, rated_only]).to_arrow_table()

    # --- arena ---------------------------------------------------------------------------------
    def create_battle(self, battle_id: str, user: str, prompt: list[Message], adapter_a: str, answer_a: str,
                      adapter_b: str, answer_b: str, meta: dict | None = None) -> None:
        with self._write() as cur:
            cur.execute("INSERT INTO battles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [battle_id, user, json.dumps(prompt), adapter_a, answer_a, adapter_b, answer_b,
                         json.dumps(meta or {}), _now()])

    def get_battle(self, battle_id: str) -> Battle | None:
        with self._read() as cur:
            rows = _rows(cur.execute("SELECT * FROM battles WHERE id = ?", [battle_id]))
            if not rows:
                return None
            votes = self._votes(cur, "WHERE v.battle_id = ?", [battle_id])
        b = rows[0]
        return Battle(id=b["id"], user=b["user"], prompt=json.loads(b["prompt"]), adapter_a=b["adapter_a"],
                      answer_a=b["answer_a"], adapter_b=b["adapter_b"], answer_b=b["answer_b"],
                      created_at=_from_db(b["created_at"]), votes=votes, meta=_loads(b["meta"], {}))

    def vote(self, battle_id: str, user: str, winner: str) -> ArenaVote:
        """Record ``user``'s verdict on a battle; each user votes once per battle."""
        if winner not in WINNERS:
            raise InvalidRating(f"winner must be one of {WINNERS}, not {winner!r}")
        now = _now()
        with self._write() as cur:
            b = cur.execute("SELECT adapter_a, adapter_b FROM battles WHERE id = ?", [battle_id]).fetchone()
            if b is None:
                raise UnknownBattle(f"unknown battle {battle_id!r}")
            if cur.execute('SELECT 1 FROM arena_votes WHERE battle_id = ? AND "user" = ?', [battle_id, user]).fetchone():
                raise AlreadyVoted(f"{user!r} already voted on battle {battle_id!r}")
            cur.execute("INSERT INTO arena_votes VALUES (?, ?, ?, ?)", [battle_id, user, winner, now])
        log.info("arena vote battle=%s user=%s winner=%s", battle_id, user, winner)
        return ArenaVote(battle_id=battle_id, user=user, adapter_a=b[0], adapter_b=b[1], winner=winner,
                         created_at=_from_db(now))

    @staticmethod
    def _votes(cur, where: str, params: list) -> list[ArenaVote]:
        cur.execute(f"""SELECT v.battle_id, v."user", b.adapter_a, b.adapter_b, v.winner, v.created_at
                        FROM arena_votes v JOIN battles b ON b.id = v.battle_id {where}
                        ORDER BY v.created_at, v.battle_id""", params)
        return [ArenaVote(*row[:5], created_at=_from_db(row[5])) for row in cur.fetchall()]

    def arena_votes(self, since: datetime | None = None) -> list[ArenaVote]:
        with self._read() as cur:
            return self._votes(cur, "WHERE v.created_at >= ?", [_to_db(since) or _FAR_PAST])

    # --- traffic-split experiments ---------------------------------------------------------------
    def start_experiment(self, control: str, candidate: str, percent: float, actor: str) -> Experiment:
        """Start a split; an experiment still running ends with outcome "superseded"."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within [0, 100], not {percent}")
        exp_id, now = new_id(), _now()
        with self._write() as cur:
            cur.execute("""UPDATE experiments SET ended_at = ?, ended_by = ?, outcome = 'superseded', reason = ?
                           WHERE ended_at IS NULL""", [now, actor, f"superseded by experiment {exp_id}"])
            cur.execute("""INSERT INTO experiments (id, control, candidate, percent, started_at, started_by, numbers)
                           VALUES (?, ?, ?, ?, ?, ?, '{}')""", [exp_id, control, candidate, percent, now, actor])
        return Experiment(id=exp_id, control=control, candidate=candidate, percent=percent,
                          started_at=_from_db(now), started_by=actor)

    def active_experiment(self) -> Experiment | None:
        found = self._experiments("WHERE ended_at IS NULL")
        return found[0] if found else None

    def end_experiment(self, experiment_id: str, outcome: str, reason: str, actor: str,
                       numbers: dict | None = None) -> None:
        """End a running experiment; ending one that already ended changes nothing."""
        with self._write() as cur:
            cur.execute("""UPDATE experiments SET ended_at = ?, ended_by = ?, outcome = ?, reason = ?, numbers = ?
                           WHERE id = ? AND ended_at IS NULL""",
                        [_now(), actor, outcome, reason, json.dumps(numbers or {}), experiment_id])
        log.info("experiment %s ended: %s by %s", experiment_id, outcome, actor)

    def list_experiments(self) -> list[Experiment]:
        return self._experiments("")

    def _experiments(self, where: str) -> list[Experiment]:
        with self._read() as cur:
            rows = _rows(cur.execute(f"SELECT * FROM experiments {where} ORDER BY started_at DESC, id"))
        return [Experiment(**{**_aware(r, "started_at", "ended_at"), "numbers": _loads(r["numbers"], {})})
                for r in rows]

    def experiment_counts(self, experiment_id: str) -> dict[str, dict[str, int]]:
        """Thumbs per arm on the answers served in the experiment (implicit downs included)."""
        counts = {arm: {"up": 0, "down": 0, "messages": 0} for arm in ("control", "candidate")}
        with self._read(settle=True) as cur:
            cur.execute("""SELECT m.arm, count(DISTINCT m.id), count(*) FILTER (r.rating = 'up'),
                                  count(*) FILTER (r.rating = 'down')
                           FROM messages m LEFT JOIN ratings r ON r.message_id = m.id
                           WHERE m.experiment_id = ? AND m.role = 'assistant' GROUP BY m.arm""", [experiment_id])
            for arm, messages, up, down in cur.fetchall():
                counts[arm] = {"up": up, "down": down, "messages": messages}
        return counts

    # --- adapter registry ------------------------------------------------------------------------
    def register_adapter(self, rec: AdapterRecord) -> None:
        """Add an adapter version to the registry (or update it when the name exists)."""
        with self._write() as cur:
            cur.execute("""INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                           ON CONFLICT (name) DO UPDATE SET path = excluded.path, parent = excluded.parent,
                           snapshot_id = excluded.snapshot_id, run_id = excluded.run_id, metrics = excluded.metrics,
                           status = excluded.status""",
                        [rec.name, rec.path, rec.parent, rec.snapshot_id, rec.run_id, json.dumps(rec.metrics),
                         rec.status, _to_db(rec.created_at) or _now()])
        log.info("adapter registered name=%s status=%s", rec.name, rec.status)

    @staticmethod
    def _adapter(row: dict) -> AdapterRecord:
        return AdapterRecord(name=row["name"], path=row["path"], parent=row["parent"], snapshot_id=row["snapshot_id"],
                             run_id=row["run_id"], metrics=_loads(row["metrics"], {}), status=row["status"],
                             created_at=_from_db(row["created_at"]))

    def get_adapter(self, name: str) -> AdapterRecord | None:
        with self._read() as cur:
            rows = _rows(cur.execute("SELECT * FROM adapters WHERE name = ?", [name]))
        return self._adapter(rows[0]) if rows else None

    def list_adapter_records(self) -> list[AdapterRecord]:
        with self._read() as cur:
            return [self._adapter(r) for r in _rows(cur.execute("SELECT * FROM adapters ORDER BY created_at, name"))]

    def set_adapter_status(self, name: str, status: str) -> None:
        with self._write() as cur:
            cur.execute("UPDATE adapters SET status = ? WHERE name = ?", [status, name])

    def production(self) -> str:
        """The adapter ``production`` points at; "base" before any promotion."""
        with self._read() as cur:
            row = cur.execute("SELECT value FROM pointers WHERE name = 'production'").fetchone()
        return row[0] if row else BASE

    def set_production(self, name: str, actor: str, reason: str, action: str = "promote") -> None:
        """Re-point production in one transaction: pointer, statuses and an ``adapter_events`` row."""
        with self._write() as cur:
            row = cur.execute("SELECT value FROM pointers WHERE name = 'production'").fetchone()
            previous = row[0] if row else BASE
            cur.execute("""INSERT INTO pointers VALUES ('production', ?)
                           ON CONFLICT (name) DO UPDATE SET value = excluded.value""", [name])
            if previous not in (BASE, name):
                cur.execute("UPDATE adapters SET status = 'retired' WHERE name = ?", [previous])
            cur.execute("UPDATE adapters SET status = 'production' WHERE name = ?", [name])
            cur.execute("INSERT INTO adapter_events VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [new_id(), _now(), actor, action, previous, name, reason])

    def adapter_events(self, limit: int = 100) -> list[dict]:
        """Production switches, newest first: at, actor, action, from, to, reason."""
        with self._read() as cur:
            cur.execute("""SELECT "at", actor, action, from_adapter AS "from", to_adapter AS "to", reason
                           FROM adapter_events ORDER BY "at" DESC, id LIMIT ?""", [limit])
            return [_aware(r, "at") for r in _rows(cur)]

    def next_adapter_version(self) -> str:
        """The next free name of the form v<N>."""
        with self._read() as cur:
            row = cur.execute(r"""SELECT max(CAST(regexp_extract(name, '^v(\d+)$', 1) AS BIGINT))
                                  FROM adapters WHERE regexp_matches(name, '^v\d+$')""").fetchone()
        return f"v{(row[0] or 0) + 1}"

    def adapter_rating_stats(self) -> list[dict]:
        """Per adapter: answers served, thumbs up and down (implicit downs included)."""
        return [{"adapter": r["adapter"], "messages": r["messages"], "up": r["up"], "down": r["down"]}
                for r in self.stats()["per_adapter"]]

    def adapter_daily_stats(self) -> list[dict]:
        """Per adapter per day: thumbs up/down (by rating day) and arena wins/losses (by vote day)."""
        with self._read(settle=True) as cur:
            return _rows(cur.execute("""
                SELECT strftime(day, '%Y-%m-%d') AS day, adapter, sum(up)::BIGINT AS up, sum(down)::BIGINT AS down,
                       sum(wins)::BIGINT AS wins, sum(losses)::BIGINT AS losses
                FROM (SELECT r.created_at::DATE AS day, m.adapter, (r.rating = 'up')::INT AS up,
                             (r.rating = 'down')::INT AS down, 0 AS wins, 0 AS losses
                      FROM ratings r JOIN messages m ON m.id = r.message_id
                      UNION ALL
                      SELECT v.created_at::DATE, b.adapter_a, 0, 0, (v.winner = 'a')::INT, (v.winner = 'b')::INT
                      FROM arena_votes v JOIN battles b ON b.id = v.battle_id
                      UNION ALL
                      SELECT v.created_at::DATE, b.adapter_b, 0, 0, (v.winner = 'b')::INT, (v.winner = 'a')::INT
                      FROM arena_votes v JOIN battles b ON b.id = v.battle_id)
                WHERE adapter IS NOT NULL
                GROUP BY day, adapter ORDER BY day, adapter"""))

    # --- training runs ---------------------------------------------------------------------------
    def create_run(self, trigger: str, actor: str, settings: dict) -> str:
        run_id = new_id()
        with self._write() as cur:
            cur.execute("""INSERT INTO runs (id, trigger, actor, settings, status, created_at)
                           VALUES (?, ?, ?, ?, 'queued', ?)""",
                        [run_id, trigger, actor, json.dumps(settings, default=str), _now()])
        log.info("run created id=%s trigger=%s actor=%s", run_id, trigger, actor)
        return run_id

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set some of a run's fields (status, stage, step, ..., see ``_RUN_FIELDS``)."""
        unknown = set(fields) - _RUN_FIELDS
        if unknown:
            raise TypeError(f"update_run got unknown fields {sorted(unknown)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {fields['status']!r}")
        if not fields:
            return
        values = []
        for key, value in fields.items():
            if key in _JSON_RUN_FIELDS and value is not None:
                value = json.dumps(value, default=str)
            elif isinstance(value, datetime):
                value = _to_db(value)
            values.append(value)
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._write() as cur:
            cur.execute(f"UPDATE runs SET {assignments} WHERE id = ? RETURNING id", [*values, run_id])
            if cur.fetchone() is None:
                raise UnknownRun(f"unknown run {run_id!r}")

    def add_run_metric(self, run_id: str, step: int, loss: float | None, eval_loss: float | None) -> None:
        with self._write() as cur:
            cur.execute("INSERT INTO run_metrics VALUES (?, ?, ?, ?, ?)", [run_id, step, loss, eval_loss, _now()])

    def run_metrics(self, run_id: str) -> list[dict]:
        with self._read() as cur:
            cur.execute("SELECT step, loss, eval_loss FROM run_metrics WHERE run_id = ? ORDER BY step, created_at",
                        [run_id])
            return _rows(cur)

    @staticmethod
    def _run(row: dict) -> dict:
        for key in _JSON_RUN_FIELDS:
            row[key] = _loads(row[key])
        return _aware(row, "cutoff", "created_at", "started_at", "finished_at")

    def get_run(self, run_id: str) -> dict | None:
        with self._read() as cur:
            rows = _rows(cur.execute("SELECT * FROM runs WHERE id = ?", [run_id]))
        return self._run(rows[0]) if rows else None

    def list_runs(self, limit: int = 50) -> list[dict]:
        """Runs, newest first."""
        with self._read() as cur:
            return [self._run(r) for r in _rows(cur.execute(
                "SELECT * FROM runs ORDER BY created_at DESC, id LIMIT ?", [limit]))]

    def last_cutoff(self) -> datetime | None:
        """Cutoff of the latest run that completed its training set (succeeded or rejected)."""
        with self._read() as cur:
            row = cur.execute("""SELECT cutoff FROM runs WHERE status IN ('succeeded', 'rejected') AND cutoff IS NOT NULL
                                 ORDER BY created_at DESC, id LIMIT 1""").fetchone()
        return _from_db(row[0]) if row else None

    def mark_stale_runs_failed(self, reason: str) -> int:
        """Fail runs left queued or running by an app that stopped; returns how many."""
        with self._write() as cur:
            cur.execute("""UPDATE runs SET status = 'failed', error = ?, finished_at = ?
                           WHERE status IN ('queued', 'running') RETURNING id""", [reason, _now()])
            ids = [r[0] for r in cur.fetchall()]
        for run_id in ids:
            log.warning("run %s marked failed: %s", run_id, reason)
        return len(ids)

    # --- training-set snapshots ------------------------------------------------------------------
    def record_snapshot(self, snapshot_id: str, path: str | Path, cutoff: datetime | None, counts: dict,
                        content_hash: str, created_at: datetime | None = None) -> None:
        with self._write() as cur:
            cur.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?)",
                        [snapshot_id, str(path), _to_db(cutoff), json.dumps(counts), content_hash,
                         _to_db(created_at) or _now()])

    @staticmethod
    def _snapshot(row: dict) -> dict:
        row["counts"] = _loads(row["counts"], {})
        return _aware(row, "cutoff", "created_at")

    def get_snapshot(self, snapshot_id: str) -> dict | None:
        """{id, path, cutoff, counts, content_hash, created_at} or None."""
        with self._read() as cur:
            rows = _rows(cur.execute("SELECT * FROM snapshots WHERE id = ?", [snapshot_id]))
        return self._snapshot(rows[0]) if rows else None

    def list_snapshots(self) -> list[dict]:
        """Snapshots, newest first."""
        with self._read() as cur:
            return [self._snapshot(r) for r in _rows(cur.execute("SELECT * FROM snapshots ORDER BY created_at DESC, id"))]

    # --- embedding cache -------------------------------------------------------------------------
    def put_embeddings(self, model: str, items: dict[str, list[float]]) -> None:
        """Cache vectors by key (a text hash); keys already cached for ``model`` keep their vector."""
        if not items:
            return
        table = _vector_table(list(items), list(items.values()))
        with self._write() as cur:
            cur.register("new_vectors", table)
            try:
                cur.execute("""INSERT INTO embeddings
                               SELECT ?, n.key, n.vector::FLOAT[] FROM new_vectors n
                               ANTI JOIN (SELECT key FROM embeddings WHERE model = ?) e ON e.key = n.key""",
                            [model, model])
            finally:
                cur.unregister("new_vectors")

    def get_embeddings(self, model: str, keys: list[str]) -> dict[str, list[float]]:
        """The cached vectors among ``keys`` (missing keys are absent from the result)."""
        if not keys:
            return {}
        import pyarrow as pa

        with self._read() as cur:
            cur.register("wanted", pa.table({"key": pa.array(keys, pa.string())}))
            try:
                found = cur.sql("""SELECT e.key, e.vector FROM embeddings e
                                   SEMI JOIN wanted w ON w.key = e.key WHERE e.model = ?""",
                                params=[model]).to_arrow_table()
            finally:
                cur.unregister("wanted")
        return _vectors_from_arrow(found)


def _vector_table(keys: list[str], vectors: list[list[float]]):
    """An arrow table of (key, vector); via numpy when all vectors have one length, since building
    100k Python lists into arrow one by one is the slow path."""
    import numpy as np
    import pyarrow as pa

    lengths = {len(v) for v in vectors}
    if len(lengths) == 1:
        flat = np.asarray(vectors, dtype=np.float32).reshape(-1)
        column = pa.FixedSizeListArray.from_arrays(pa.array(flat), lengths.pop())
    else:
        column = pa.array(vectors, type=pa.list_(pa.float32()))
    return pa.table({"key": pa.array(keys, pa.string()), "vector": column})


def _vectors_from_arrow(table) -> dict[str, list[float]]:
    import numpy as np

    if table.num_rows == 0:
        return {}
    keys = table.column("key").to_pylist()
    column = table.column("vector").combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    with _gc_paused():
        if (lengths == lengths[0]).all():
            matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(len(keys), int(lengths[0]))
            # float64 first: numpy's tolist() is about 1.5x faster from float64 (same values, exactly).
            return dict(zip(keys, matrix.astype(np.float64).tolist(), strict=True))
        return dict(zip(keys, column.to_pylist(), strict=True))


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building millions of floats: it cannot free any of them, yet the
    100k new lists trigger repeated collections that made reading 100k vectors 3-5x slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_PER_ADAPTER_SQL = """
WITH r AS (SELECT message_id, count(*) FILTER (rating = 'up') AS up, count(*) FILTER (rating = 'down') AS down
           FROM ratings GROUP BY message_id),
     c AS (SELECT message_id, count(*) AS n FROM corrections GROUP BY message_id)
SELECT m.adapter, count(*) AS messages,
       count(*) FILTER (r.message_id IS NOT NULL OR c.message_id IS NOT NULL) AS rated,
       coalesce(sum(r.up), 0)::BIGINT AS up, coalesce(sum(r.down), 0)::BIGINT AS down,
       coalesce(sum(c.n), 0)::BIGINT AS corrections
FROM messages m LEFT JOIN r ON r.message_id = m.id LEFT JOIN c ON c.message_id = m.id
WHERE m.role = 'assistant'
GROUP BY m.adapter ORDER BY m.adapter
"""
