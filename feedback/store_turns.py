"""Conversations and their messages: chat turns in, messages out."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from feedback.errors import NotAssistantMessage, UnknownMessage
from feedback.models import Message, StoredMessage, TurnRecord
from feedback.store_core import _MESSAGE_SELECT, StoreCore, _from_db, _loads, _now, _rows, _same, new_id

log = logging.getLogger(__name__)


class TurnStore(StoreCore):
    """Conversations and their messages: chat turns in, messages out."""

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
            cur.execute("""INSERT INTO ratings (message_id, "user", rating, comment, implicit, created_at)
                           VALUES (?, ?, 'down', NULL, true, ?)
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

    def conversation_owner(self, conversation_id: str) -> str | None:
        """Who started the conversation (a branch ``<id>.<n>`` belongs to its root's owner); None if unknown."""
        with self._read(settle=True) as cur:
            row = cur.execute("""SELECT coalesce(p."user", c."user") FROM conversations c
                                 LEFT JOIN conversations p ON p.id = c.parent_id WHERE c.id = ?""",
                              [conversation_id]).fetchone()
        return row[0] if row else None

    def conversation(self, conversation_id: str, include_superseded: bool = False) -> list[StoredMessage]:
        """The conversation's messages in order; superseded (regenerated) answers only when asked."""
        with self._read(settle=True) as cur:
            cur.execute(f"""SELECT {_MESSAGE_SELECT} FROM messages WHERE conversation_id = ?
                            AND (? OR NOT superseded) ORDER BY position, seq""",
                        [conversation_id, include_superseded])
            return [self._stored_message(r) for r in _rows(cur)]

