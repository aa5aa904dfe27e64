"""Ratings and corrections, and the rated examples and pairs training reads."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import defaultdict
from datetime import datetime, timedelta

from feedback.errors import InvalidRating, NotAssistantMessage, UnknownMessage
from feedback.models import Message, PreferencePair, RatedExample, Rating
from feedback.store_core import (
    _FAR_FUTURE,
    _FAR_PAST,
    MAX_TEXT_CHARS,
    RATING_REASONS,
    RATINGS,
    StoreCore,
    _from_db,
    _now,
    _rows,
    _to_db,
    upsert,
)
from feedback.store_turns import origin_sql
from feedback.text import text_problem, visible

log = logging.getLogger(__name__)

# Latest rating and latest correction per assistant message (by anyone), and when it was last judged.
_RATED_CTE = """
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
"""
_RATED_SQL = _RATED_CTE + "SELECT * FROM t WHERE rated_at >= ? AND rated_at < ?\n"

# Answers judged in a window: an answer's rated_at is its newest rating or correction, so one with
# rated_at in [since, until) has a rating or correction made in it. Both tables are written in time
# order, so DuckDB's zone maps skip most of a year here.
_TOUCHED_SQL = """SELECT message_id FROM ratings WHERE created_at >= $since AND created_at < $until
                  UNION SELECT message_id FROM corrections WHERE created_at >= $since AND created_at < $until"""
# The Data tab's rows for a page of answers (by key); the caller keeps the (answer, rater) pairs of the page.
_DATA_ROWS_SQL = """
SELECT m.id AS message_id, m.conversation_id, r."user", m.adapter, m.position, m.seq, m.content AS answer,
       m.origin, r.rating, r.reason, r.implicit, r.comment, c.content AS correction, r.created_at
FROM (SELECT * FROM ratings WHERE message_id IN ({ids})) r
JOIN (SELECT id, conversation_id, adapter, position, seq, content, """ + origin_sql() + """ AS origin
      FROM messages WHERE id IN ({ids})) m
  ON m.id = r.message_id
LEFT JOIN (SELECT * FROM corrections WHERE message_id IN ({ids})) c
  ON c.message_id = r.message_id AND c."user" = r."user"
"""
# Messages per range of an export: DuckDB sorts one range at a time (tens of MB), and each range reads
# the messages table once, so fewer, larger ranges are faster. Batches of rows go to Python.
EXPORT_CHUNK_MESSAGES = 50_000
EXPORT_BATCH_ROWS = 4096
MAX_DATA_PAGE = 500  # most rows one Data tab page shows
# Below DuckDB's index_scan_max_count (2048), so each chunk is index lookups, not a scan.
KEY_CHUNK = 1000
# More answers than this in a window and one scan of history is cheaper than chunks of index lookups.
MAX_KEYED = 50_000


def _chunks(items: list, size: int | None = None):
    size = size or KEY_CHUNK
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


def rated_by_ids(cur, ids: list[str]) -> list[dict]:
    """The rated-answer rows (as _RATED_CTE's t) of ``ids``, unordered.

    Three plain lookups per chunk of keys, joined here: an IN list of parameters is served by the ART
    indexes (primary key, ratings_message, corrections_message), where a join in SQL, even of
    the same IN lists, is planned as a hash join that reads every message of the history.
    """
    rows: list[dict] = []
    for chunk in _chunks(sorted(set(ids))):
        marks = _placeholders(len(chunk))
        # role is checked here, not in SQL: a second condition makes DuckDB scan instead of using the index.
        cur.execute(f"""SELECT id, conversation_id, position, seq, content, adapter, role FROM messages
                        WHERE id IN ({marks})""", chunk)
        answers = [m for m in _rows(cur) if m.pop("role") == "assistant"]
        latest_rating = _latest(cur.execute(f"""SELECT message_id, "user", rating, implicit, created_at FROM ratings
                                               WHERE message_id IN ({marks})""", chunk).fetchall())
        latest_correction = _latest(cur.execute(f"""SELECT message_id, "user", content, created_at FROM corrections
                                                   WHERE message_id IN ({marks})""", chunk).fetchall())
        for m in answers:
            r, c = latest_rating.get(m["id"]), latest_correction.get(m["id"])
            if r is None and c is None:
                continue
            times = [x[-1] for x in (r, c) if x is not None]
            rows.append({**m, "rating": r and r[2], "rating_user": r and r[1], "implicit": bool(r and r[3]),
                         "correction": c and c[2], "correction_user": c and c[1], "rated_at": max(times)})
    return rows


def _latest(judgements: list[tuple]) -> dict[str, tuple]:
    """Per answer, the newest of (message_id, user, ..., created_at) rows; on a tie the first user by name,
    as ``ORDER BY created_at DESC, "user"`` in _RATED_CTE."""
    out: dict[str, tuple] = {}
    for j in judgements:
        old = out.get(j[0])
        if old is None or j[-1] > old[-1] or (j[-1] == old[-1] and j[1] < old[1]):
            out[j[0]] = j
    return out


def touched_ids(cur, since: datetime, until: datetime, extra_sql: str = "") -> list[str]:
    """Answers with a rating or correction made in [since, until) (plus ``extra_sql``'s message_ids)."""
    cur.execute(_TOUCHED_SQL + (f" UNION {extra_sql}" if extra_sql else ""), {"since": since, "until": until})
    return [r[0] for r in cur.fetchall()]


class RatingStore(StoreCore):
    """Ratings and corrections, and the rated examples and pairs training reads."""

    # --- ratings -------------------------------------------------------------------------------
    def rate(self, rating: Rating, *, trust: str | None = None) -> Rating:
        """Store (or replace) ``rating.user``'s rating of an assistant answer, and its correction if any.

        ``trust`` is decided by the edge that knows who rated (``web/review.py``): ``trusted`` (by role),
        ``untrusted`` or ``review`` (held for an admin); it updates the answer's review state in the
        same transaction, where a user an admin trusts is trusted (read there, so a revocation cannot
        land between the check and the write), and the stored rating's ``review`` says the state it
        left. None leaves the state as it is (see ``feedback/store_review.py``).
        """
        if rating.rating not in RATINGS:
            raise InvalidRating(f"rating must be one of {RATINGS}, not {rating.rating!r}")
        if rating.reason is not None:
            if rating.reason not in RATING_REASONS:
                raise InvalidRating(f"reason must be one of {RATING_REASONS}, not {rating.reason!r}")
            if rating.rating != "down":
                raise InvalidRating("a reason goes with a thumbs-down")
        # The edges check too; this keeps a NUL or a lone surrogate out whatever the caller.
        for name, text in (("comment", rating.comment), ("correction", rating.correction)):
            problem = None if text is None else text_problem(text) if isinstance(text, str) else "must be text"
            if problem:
                raise InvalidRating(f"{name} {problem}")
        if rating.comment is not None and len(rating.comment) > MAX_TEXT_CHARS:
            raise InvalidRating(f"comment longer than {MAX_TEXT_CHARS} characters")
        if rating.correction is not None:
            if not visible(rating.correction).strip():
                raise InvalidRating("correction is empty")
            if len(rating.correction) > MAX_TEXT_CHARS:
                raise InvalidRating(f"correction longer than {MAX_TEXT_CHARS} characters")
        self._turns.wait()  # the answer being rated may have been stored a moment ago
        with self._write() as cur:
            # Stamped inside the lock: the review state follows write order and the latest correction is
            # picked by time, so the two orders must agree (a stamp taken before the wait could lose a race).
            now = _now()
            row = cur.execute("SELECT role FROM messages WHERE id = ?", [rating.message_id]).fetchone()
            if row is None:
                raise UnknownMessage(f"unknown message {rating.message_id!r}")
            if row[0] != "assistant":
                raise NotAssistantMessage(f"message {rating.message_id!r} is a {row[0]} message; rate answers")
            who = {"message_id": rating.message_id, "user": rating.user}
            upsert(cur, "ratings", who, {"rating": rating.rating, "comment": rating.comment,
                                         "implicit": rating.implicit, "created_at": now, "reason": rating.reason})
            if rating.correction is not None:
                upsert(cur, "corrections", who, {"content": rating.correction, "created_at": now})
            state = None
            if trust is not None:
                from feedback.store_review import review_after_rating  # store_review builds on this module

                state = review_after_rating(cur, rating.message_id, rating.user, trust,
                                            rating.correction is not None, now)
        self._note_judged()
        log.info("rating stored message=%s user=%s rating=%s reason=%s correction=%s", rating.message_id,
                 rating.user, rating.rating, rating.reason, rating.correction is not None)
        return Rating(message_id=rating.message_id, user=rating.user, rating=rating.rating, comment=rating.comment,
                      correction=rating.correction, implicit=rating.implicit, created_at=_from_db(now),
                      reason=rating.reason, review=state)

    def stats(self, max_age_s: float = 0) -> dict:
        """Totals, per adapter and per day. Implicit thumbs-down (from regenerates) count as downs.

        ``max_age_s`` > 0 may serve the result of an earlier call, computed at most that long ago and
        with no rating or correction stored since: the full scans behind it grow with the history, and
        the Data tab asks on every load. New chat turns may then show up to ``max_age_s`` late.
        """
        cached = self._stats_cache
        now = time.monotonic()
        if cached and now - cached[0] < max_age_s and cached[1] == self._judged:
            return copy.deepcopy(cached[2])
        judged = self._judged
        out = self._compute_stats()
        self._stats_cache = (now, judged, out)
        return copy.deepcopy(out)

    def _compute_stats(self) -> dict:
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
                            has_correction: bool | None = None, limit: int = 200, offset: int = 0) -> list[dict]:
        """One row per (answer, rater), newest first, for the admin Data tab: page ``offset // limit``.

        The page is found among the newest ratings first (the last day, week, month, year, then all):
        once a span holds ``offset + limit`` matches, older ratings cannot change the page, so a page
        of recent ratings costs the same however long the history is.
        """
        limit = max(1, min(int(limit), MAX_DATA_PAGE))
        offset = max(0, int(offset))
        lo, hi = _to_db(since) or _FAR_PAST, _to_db(until) or _FAR_FUTURE
        where = ["r.created_at >= $floor", "r.created_at < $until"]
        params: dict = {"until": hi, "limit": limit, "offset": offset}
        if rating is not None:
            where.append("r.rating = $rating")
            params["rating"] = rating
        if user is not None:
            where.append('r."user" = $user')
            params["user"] = user
        if adapter is not None:
            where.append("r.message_id IN (SELECT id FROM messages WHERE adapter = $adapter)")
            params["adapter"] = adapter
        if has_correction is not None:
            where.append(("" if has_correction else "NOT ") + """EXISTS (SELECT 1 FROM corrections c
                         WHERE c.message_id = r.message_id AND c."user" = r."user")""")
        page_sql = f"""SELECT r.message_id, r."user" FROM ratings r WHERE {" AND ".join(where)}
                       ORDER BY r.created_at DESC, r.message_id LIMIT $limit OFFSET $offset"""
        with self._read(settle=True) as cur:
            newest = cur.execute("SELECT max(created_at) FROM ratings WHERE created_at >= ? AND created_at < ?",
                                 [lo, hi]).fetchone()[0]
            keys: list[tuple] = []
            for days in (1, 7, 31, 366, None) if newest is not None else ():
                floor = lo if days is None else max(lo, newest - timedelta(days=days))
                keys = cur.execute(page_sql, {**params, "floor": floor}).fetchall()
                if len(keys) == limit or floor == lo:
                    break
            order = {k: i for i, k in enumerate(keys)}
            rows = []
            for chunk in _chunks(sorted({k[0] for k in keys})):
                cur.execute(_DATA_ROWS_SQL.format(ids=_placeholders(len(chunk))), chunk * 3)
                rows += [r for r in _rows(cur) if (r["message_id"], r["user"]) in order]
            rows.sort(key=lambda r: order[(r["message_id"], r["user"])])
            prompts = self._prompts(cur, rows)
        out = []
        for row, prompt in zip(rows, prompts, strict=True):
            last_user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            out.append({"message_id": row["message_id"], "conversation_id": row["conversation_id"],
                        "user": row["user"], "adapter": row["adapter"], "prompt": last_user, "answer": row["answer"],
                        "rating": row["rating"], "reason": row["reason"], "implicit": row["implicit"],
                        "comment": row["comment"], "origin": row["origin"],
                        "correction": row["correction"], "created_at": _from_db(row["created_at"])})
        return out

    @staticmethod
    def _by_ids(cur, select: str, ids: list[str]) -> dict[str, dict]:
        """Rows of ``select`` (whose first column is ``id``) for ``ids``, by primary-key lookups in chunks."""
        out: dict[str, dict] = {}
        for chunk in _chunks(sorted(set(ids))):
            cur.execute(f"{select} WHERE id IN ({_placeholders(len(chunk))})", chunk)
            out.update((r["id"], r) for r in _rows(cur))
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
        by_conversation: dict[str, list[tuple]] = defaultdict(list)
        # Chunks of parameters so the messages_conversation index serves the lookup (see rated_by_ids);
        # a very large set reads history once instead.
        chunks = _chunks(ids) if len(ids) <= MAX_KEYED else [None]
        for chunk in chunks:
            where = f"conversation_id IN ({_placeholders(len(chunk))})" if chunk else \
                "conversation_id IN (SELECT unnest(?::VARCHAR[]))"
            cur.execute(f"""SELECT conversation_id, position, seq, role, content FROM messages
                            WHERE {where} ORDER BY position, seq""", chunk or [ids])
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
        window = [_to_db(since) or _FAR_PAST, _to_db(until) or _FAR_FUTURE]
        with self._read(settle=True) as cur:
            ids = touched_ids(cur, *window) if since is not None else None
            if ids is not None and len(ids) <= MAX_KEYED:  # the nightly case: sized by the window
                rows = sorted((r for r in rated_by_ids(cur, ids) if window[0] <= r["rated_at"] < window[1]),
                              key=lambda r: (r["rated_at"], r["id"]))
            else:
                cur.execute(_RATED_SQL + " ORDER BY rated_at, id", window)
                rows = _rows(cur)
            prompts = self._prompts(cur, rows)
        return [RatedExample(message_id=r["id"], conversation_id=r["conversation_id"],
                             user=r["rating_user"] or r["correction_user"], adapter=r["adapter"], prompt=prompt,
                             answer=r["content"], rating=r["rating"], correction=r["correction"],
                             implicit=bool(r["implicit"]), rated_at=_from_db(r["rated_at"]))
                for r, prompt in zip(rows, prompts, strict=True)]

    def new_rated_count(self, since: datetime | None) -> int:
        """How many answers were rated or corrected at or after ``since`` (all when None)."""
        # With no upper bound, "rated at or after since" is "has a rating or correction made since".
        with self._read(settle=True) as cur:
            return cur.execute(f"SELECT count(*) FROM ({_TOUCHED_SQL})",
                               {"since": _to_db(since) or _FAR_PAST, "until": _FAR_FUTURE}).fetchone()[0]

    def preference_pairs(self, since: datetime | None = None, until: datetime | None = None) -> list[PreferencePair]:
        """Corrections (chosen = correction, rejected = the answer) and decisive arena votes (a or b)."""
        window = [_to_db(since) or _FAR_PAST, _to_db(until) or _FAR_FUTURE]
        with self._read(settle=True) as cur:
            # The window's corrections and votes first (zone maps on created_at), then their answers and
            # battles by key: a join would read every message and battle of the history.
            cur.execute("""SELECT message_id, "user", content AS correction, created_at FROM corrections
                           WHERE created_at >= ? AND created_at < ?""", window)
            found = _rows(cur)
            answers = self._by_ids(cur, "SELECT id, conversation_id, position, seq, content FROM messages",
                                   [c["message_id"] for c in found])
            corrections = sorted(({**answers[c["message_id"]], **c} for c in found if c["message_id"] in answers),
                                 key=lambda c: (c["created_at"], c["message_id"]))
            prompts = self._prompts(cur, corrections)
            cur.execute("""SELECT battle_id, "user", winner, created_at FROM arena_votes
                           WHERE winner IN ('a', 'b') AND created_at >= ? AND created_at < ?""", window)
            cast = _rows(cur)
            battles = self._by_ids(cur, 'SELECT id, prompt, answer_a, answer_b, "user" AS owner FROM battles',
                                   [v["battle_id"] for v in cast])
            # The battle owner's vote only, as the leaderboard counts (feedback.store_core.OWNER_VOTE): files from
            # before the store refused other voters may hold an admin's second vote on a user's battle.
            votes = sorted(({**battles[v["battle_id"]], **v} for v in cast
                            if v["battle_id"] in battles and battles[v["battle_id"]]["owner"] == v["user"]),
                           key=lambda v: (v["created_at"], v["id"]))
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
        """Every message of the selected conversations, with judgements, as one pyarrow Table (small exports)."""
        import pyarrow as pa

        batches = list(self.export_batches(since=since, rated_only=rated_only))
        return pa.Table.from_batches(batches) if batches else pa.Table.from_batches([], schema=self._export_schema())

    def _export_schema(self):
        with self._read() as cur:
            return cur.sql(_EXPORT_SQL, params={**_export_params(_FAR_FUTURE, False), "lo": "",
                                                "hi": None}).to_arrow_table().schema

    def export_batches(self, since: datetime | None = None, rated_only: bool = False,
                       chunk_messages: int | None = None):
        """The export's rows as pyarrow RecordBatches, in conversation order (a conversation may span two).

        Selected: conversations with a message at or after ``since``; with ``rated_only``, only those
        with at least one rated or corrected answer. ``rating``/``comment``/``correction`` are the latest
        by anyone; ``ups``/``downs`` count all raters (implicit downs included). The query runs over
        ranges of conversation ids of about ``chunk_messages`` messages each, and the rows stream out
        of each in batches, so memory stays flat however large the export.
        """
        params = _export_params(since, rated_only)
        with self._read(settle=True) as cur:
            cur.execute(_EXPORT_RANGES_SQL, {**params, "chunk": max(1, int(chunk_messages or EXPORT_CHUNK_MESSAGES))})
            starts = [r[0] for r in cur.fetchall()]
            for i, lo in enumerate(starts):
                hi = starts[i + 1] if i + 1 < len(starts) else None
                yield from cur.sql(_EXPORT_SQL, params={**params, "lo": lo, "hi": hi}).to_arrow_reader(
                    EXPORT_BATCH_ROWS)


def _export_params(since: datetime | None, rated_only: bool) -> dict:
    return {"since": _to_db(since) or _FAR_PAST, "rated_only": rated_only}


# The conversations an export selects (see RatingStore.export_batches).
_EXPORT_PICKED = """
picked AS (SELECT DISTINCT conversation_id FROM messages WHERE created_at >= $since {range}
           INTERSECT
           SELECT DISTINCT m.conversation_id FROM messages m
           WHERE (NOT $rated_only OR m.id IN (SELECT message_id FROM ratings UNION SELECT message_id FROM corrections))
                 {range})
"""
_IN_RANGE = "AND conversation_id >= $lo AND ($hi::VARCHAR IS NULL OR conversation_id < $hi)"
# The first conversation id of each range of about $chunk selected messages.
_EXPORT_RANGES_SQL = "WITH " + _EXPORT_PICKED.format(range="") + """,
sizes AS (SELECT m.conversation_id, count(*) AS n FROM messages m SEMI JOIN picked p
          ON p.conversation_id = m.conversation_id GROUP BY m.conversation_id),
running AS (SELECT conversation_id, sum(n) OVER (ORDER BY conversation_id ROWS UNBOUNDED PRECEDING) - n AS before
            FROM sizes)
SELECT min(conversation_id) AS start FROM running GROUP BY before // $chunk ORDER BY start
"""
# One range of the export: conversations with ids in [$lo, $hi) ($hi NULL: to the end).
_EXPORT_SQL = ("""
WITH inrange AS (SELECT id FROM messages WHERE true {range}),
lr AS (SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, "user") rn
       FROM ratings WHERE message_id IN (SELECT id FROM inrange)),
lc AS (SELECT *, row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, "user") rn
       FROM corrections WHERE message_id IN (SELECT id FROM inrange)),
counts AS (SELECT message_id, count(*) FILTER (rating = 'up') AS ups, count(*) FILTER (rating = 'down') AS downs
           FROM ratings WHERE message_id IN (SELECT id FROM inrange) GROUP BY message_id),
""" + _EXPORT_PICKED + """
SELECT m.id AS message_id, m.conversation_id, cv.parent_id AS parent_conversation_id, m.position,
       m.role, m.content, {origin} AS origin, m."user", m.adapter, m.base_model, m.superseded, m.replaces,
       m.experiment_id, m.arm, m.created_at, r.rating, r.reason, r.implicit, r.comment,
       coalesce(n.ups, 0) AS ups, coalesce(n.downs, 0) AS downs, c.content AS correction,
       c."user" AS corrected_by
FROM messages m JOIN picked p ON p.conversation_id = m.conversation_id
JOIN conversations cv ON cv.id = m.conversation_id
LEFT JOIN lr r ON r.message_id = m.id AND r.rn = 1
LEFT JOIN lc c ON c.message_id = m.id AND c.rn = 1
LEFT JOIN counts n ON n.message_id = m.id
ORDER BY m.conversation_id, m.position, m.seq
""").format(range=_IN_RANGE, origin=origin_sql("m"))


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
