"""Conversations and their messages: chat turns in, messages out.

Each message records where it came from (``ORIGINS``, schema v11): an answer this server generated
freely (``model``), one it generated under a response_format or a forced tool call (``constrained``:
the client may have chosen its text, e.g. a schema with a ``const``, and the training row cannot carry
the constraint), or text the client sent (``client``: its user, system and tool messages, and any
``assistant`` turn it wrote into the history it sent). Only a ``model`` answer says what the model
does; an untrusted user's judgement of any other waits for an admin (``origin_hold``, applied by
``feedback.store_review.review_after_rating``), and a training set never takes it uncapped from them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from feedback.errors import NotAssistantMessage, UnknownMessage
from feedback.models import Message, StoredMessage, TurnRecord
from feedback.store_core import _MESSAGE_SELECT, StoreCore, _from_db, _loads, _now, _rows, _same, new_id

log = logging.getLogger(__name__)

MODEL, CONSTRAINED, CLIENT = "model", "constrained", "client"
ORIGINS = (MODEL, CONSTRAINED, CLIENT)
# Why an untrusted user's judgement of such an answer waits for an admin, whatever the judgement says.
HOLD_REASONS = {
    CLIENT: "the model did not write this answer: the user sent it as part of the chat history; "
            "waits for an admin's review",
    CONSTRAINED: "the answer was forced by the request's response_format or tool choice, which its training "
                 "row cannot show; waits for an admin's review",
}
_ORIGIN_CHUNK = 1000  # ids per IN list: below DuckDB's index_scan_max_count, so the primary key serves it


def origin_sql(alias: str = "") -> str:
    """The origin of a ``messages`` row (``alias``: the table's name in the query) as SQL.

    The stored origin; a row inserted without one (plain SQL, feedback/synthetic.py) reads as migration 11
    sets old rows: an answer always has an adapter, a message of the request never does.
    """
    m = f"{alias}." if alias else ""
    return f"coalesce({m}origin, CASE WHEN {m}role = 'assistant' AND {m}adapter IS NOT NULL THEN 'model' ELSE 'client' END)"


def answer_origin(turn: TurnRecord) -> str:
    """The origin of a turn's answer; a turn journaled before ``origin`` existed is read from its sampling."""
    if turn.origin is not None:
        return turn.origin
    return CONSTRAINED if (turn.sampling or {}).get("structured") else MODEL


def origins_of(cur, message_ids: list[str]) -> dict[str, str]:
    """{message id: origin} of the known ones among ``message_ids``."""
    ids = sorted(set(message_ids))
    out: dict[str, str] = {}
    for i in range(0, len(ids), _ORIGIN_CHUNK):
        chunk = ids[i:i + _ORIGIN_CHUNK]
        cur.execute(f"SELECT id, {origin_sql()} FROM messages WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        out.update(cur.fetchall())
    return out


def origin_hold(cur, message_id: str) -> str | None:
    """Why an untrusted judgement of ``message_id`` waits for an admin because of where the answer came
    from (``HOLD_REASONS``); None for an answer the model wrote freely."""
    return HOLD_REASONS.get(origins_of(cur, [message_id]).get(message_id))


class TurnStore(StoreCore):
    """Conversations and their messages: chat turns in, messages out."""

    # --- conversations -------------------------------------------------------------------------
    def record_turn(self, turn: TurnRecord) -> None:
        """Accept one answered turn: journaled at once, in DuckDB within milliseconds (see the module doc).

        A regenerate naming an unknown or non-assistant message is refused here, synchronously.
        """
        if turn.origin not in (None, MODEL, CONSTRAINED):
            raise ValueError(f"an answer's origin is {MODEL!r} or {CONSTRAINED!r}, not {turn.origin!r}")
        if turn.trust not in (None, "trusted", "untrusted"):
            raise ValueError(f"a regenerate's trust is 'trusted' or 'untrusted', not {turn.trust!r}")
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
            "experiment_id", "arm", "origin")}
        for t in turns:
            rows = [(m["role"], m["content"], {"origin": CLIENT}) for m in t.request_messages]
            rows.append(("assistant", t.answer, {"origin": answer_origin(t),
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
                          "completion_tokens", "finish_reason", "experiment_id", "arm", "origin"):
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
        an implicit thumbs-down by ``turn.user`` unless that user already rated it; that thumbs-down sets
        the answer's review state as any rating by ``turn.user`` would (``turn.trust``), so an untrusted
        user's regenerate never leaves their down under an admin's trust. A regenerate whose history does
        not match the replaced answer's still supersedes it, and is stored like any turn. Messages of the
        request are stored with origin ``client``, the answer with its own (``answer_origin``).
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
            added = cur.execute("""INSERT INTO ratings (message_id, "user", rating, comment, implicit, created_at)
                                   VALUES (?, ?, 'down', NULL, true, ?)
                                   ON CONFLICT (message_id, "user") DO NOTHING RETURNING message_id""",
                                [replaced["id"], turn.user, now]).fetchall()
            if added:
                from feedback.store_review import review_after_rating  # store_review builds on this module

                review_after_rating(cur, replaced["id"], turn.user, self._regenerate_trust(cur, turn), False, now)
        if conversation_id is None:
            conversation_id, stored = self._conversation_for(cur, turn.conversation_id, turn.user, request, now)
            for i in range(stored, len(request)):
                self._insert_message(cur, id=new_id(), conversation_id=conversation_id, position=i,
                                     role=request[i]["role"], content=request[i]["content"], user=turn.user,
                                     created_at=now, origin=CLIENT)
            position = len(request)
        self._insert_message(
            cur, id=turn.assistant_message_id, conversation_id=conversation_id, position=position,
            role="assistant", content=turn.answer, user=turn.user, created_at=now, adapter=turn.adapter,
            base_model=turn.base_model, sampling=json.dumps(turn.sampling), latency_ms=turn.latency_ms,
            first_token_ms=turn.first_token_ms, prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens, finish_reason=turn.finish_reason,
            experiment_id=turn.experiment_id, arm=turn.arm, replaces=turn.replaces, origin=answer_origin(turn))

    @staticmethod
    def _regenerate_trust(cur, turn: TurnRecord) -> str:
        """The trust of a regenerate's implicit thumbs-down: as the chat service passed it (by role; per-user
        trust is read by ``review_after_rating`` in this write), else what the store knows (local mode's
        single user and users an admin trusts are trusted; anyone else is not)."""
        if turn.trust is not None:
            return turn.trust
        from feedback.store_review import LOCAL_USER

        return "trusted" if turn.user == LOCAL_USER else "untrusted"

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

    def answer_origins(self, message_ids: list[str]) -> dict[str, str]:
        """{message id: where it came from (``ORIGINS``)} for the known ones among ``message_ids``."""
        with self._read(settle=True) as cur:
            return origins_of(cur, message_ids)

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

