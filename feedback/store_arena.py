"""Arena battles and votes."""

from __future__ import annotations

import json
import logging
from datetime import datetime

from feedback.errors import AlreadyVoted, BattleClosed, InvalidRating, UnknownBattle
from feedback.models import ArenaVote, Battle, Message
from feedback.store_core import (
    _FAR_PAST,
    OWNER_VOTE,
    WINNERS,
    StoreCore,
    _from_db,
    _loads,
    _now,
    _rows,
    _to_db,
)

log = logging.getLogger(__name__)


class ArenaStore(StoreCore):
    """Arena battles and votes."""

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
        """Record the verdict of the user the battle was shown to; a battle carries that one vote.

        Nobody else votes on it (an admin's vote on a user's battle counted it twice), a second vote is refused
        rather than replacing the first (it would be cast knowing the names the first revealed), and none is
        taken once one of its adapters is archived (it would move the rating of an adapter out of use).
        """
        if winner not in WINNERS:
            raise InvalidRating(f"winner must be one of {WINNERS}, not {str(winner)[:40]!r}")  # not echoed whole
        now = _now()
        with self._write() as cur:
            b = cur.execute("""SELECT b.adapter_a, b.adapter_b, b."user",
                                      EXISTS (SELECT 1 FROM adapters a WHERE a.name IN (b.adapter_a, b.adapter_b)
                                              AND a.status = 'archived')
                               FROM battles b WHERE b.id = ?""", [battle_id]).fetchone()
            if b is None or b[2] != user:
                raise UnknownBattle(f"unknown battle {battle_id!r}")
            # The owner's own vote: an older file's admin vote on the battle does not count (OWNER_VOTE), so it
            # must not stand in for the owner's.
            if cur.execute('SELECT 1 FROM arena_votes WHERE battle_id = ? AND "user" = ?', [battle_id, user]).fetchone():
                raise AlreadyVoted(f"battle {battle_id!r} already has your vote")
            if b[3]:
                raise BattleClosed(f"battle {battle_id!r} can no longer be voted on: one of its adapters has been "
                                   "archived since")
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
            return self._votes(cur, f"WHERE v.created_at >= ? AND {OWNER_VOTE}", [_to_db(since) or _FAR_PAST])

    def arena_vote_counts(self) -> list[tuple[str, str, str, int]]:
        """Votes per (adapter_a, adapter_b, winner), counted in SQL: what the leaderboard's ratings need,
        without a Python object per vote of the whole history."""
        with self._read() as cur:
            cur.execute(f"""SELECT b.adapter_a, b.adapter_b, v.winner, count(*) AS n
                           FROM arena_votes v JOIN battles b ON b.id = v.battle_id AND {OWNER_VOTE}
                           GROUP BY ALL ORDER BY ALL""")
            return [(a, b, w, int(n)) for a, b, w, n in cur.fetchall()]
