"""Review states of rated answers, and per-user trust: what may train, and what waits for an admin.

One row of ``review`` per rated assistant answer (schema v3). Its ``state``:

- ``trusted``: judged by an admin or a user an admin trusts; trains as given, no caps;
- ``untrusted``: judged by another user, not held for review (e.g. a thumbs-down); trains, capped;
- ``pending_review``: an untrusted user's correction (or thumbs-up) waiting for an admin;
- ``approved``: an admin included it; trains as trusted content (no caps);
- ``needs_review``: in ``retrain_max_rejections`` rejected runs, or blamed by the gate; waits for an admin;
- ``discarded``: an admin took it out; never trains again unless an admin includes it.

An answer with no row is ``trusted`` when judged by the single-user admin ``local``, else ``untrusted``.
Listings also show ``retrying``: an answer that trains, was in a rejected run and has not yet reached
a published adapter. ``rejections`` counts the rejected runs an answer was in.

A user's trust is read in the same write transaction as their judgement (``review_after_rating``), so a
judgement and a revocation are ordered. Revoking it (``set_user_trust``) gives the answers trusted because
of it and not yet trained what the same judgement by an untrusted user gets (``untrusted_trust``: the
review queue, or capped training); the trained ones stay but leave replay. An answer trusted for an
admin's correction stays trusted when the user only rated it later.

What trains is decided by time as before (``since`` = the cutoff of the last run that published an
adapter) plus the state: held states never train, and an admin's include re-dates the answer to the
moment of the decision, so an answer approved after the cutoff passed it is still picked up next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime

from feedback.errors import InvalidReview, UnknownMessage
from feedback.models import RatedExample
from feedback.store_core import _FAR_FUTURE, _FAR_PAST, StoreCore, _from_db, _now, _rows, _to_db, upsert
from feedback.store_ratings import (
    _RATED_CTE,
    MAX_KEYED,
    RatingStore,
    _chunks,
    _placeholders,
    rated_by_ids,
    touched_ids,
)
from feedback.store_turns import HOLD_REASONS, MODEL, origin_hold, origins_of

log = logging.getLogger(__name__)

LOCAL_USER = "local"  # web.auth.LOCAL_USER, the single-user admin; not imported so feedback/ stays free of web/
REVIEW_STATES = ("trusted", "untrusted", "pending_review", "approved", "needs_review", "discarded")
LIST_STATES = ("pending_review", "retrying", "needs_review", "discarded", "approved", "trusted", "untrusted")
HELD = ("pending_review", "needs_review", "discarded")  # never in a training set
TRUSTED = ("trusted", "approved")  # train as given: no per-user or per-answer caps
TRUST_INPUTS = ("trusted", "untrusted", "review")  # what the edge that knows the rater passes to ``rate``
REVIEW_UNTRUSTED = ("off", "corrections", "corrections_and_ups")  # settings.review_untrusted
MAX_IDS = 1000  # ids one include/discard call may name

# The stored state, or the default for answers without a row.
_STATE = """coalesce(rv.state, CASE WHEN coalesce(t.rating_user, t.correction_user) = 'local'
                                THEN 'trusted' ELSE 'untrusted' END)"""
# What trains of the rated answers t: not held, judged in the window or approved in it.
_TRAINABLE_SQL = f"""
SELECT t.*, {_STATE} AS state FROM t LEFT JOIN review rv ON rv.message_id = t.id
WHERE {_STATE} NOT IN {HELD}
  AND ((t.rated_at >= ? AND t.rated_at < ?) OR (rv.state = 'approved' AND rv.decided_at >= ? AND rv.decided_at < ?))
ORDER BY t.rated_at, t.id"""
_APPROVED_SQL = "SELECT message_id FROM review WHERE state = 'approved' AND decided_at >= $since AND decided_at < $until"
_SHOWN = f"""CASE WHEN {_STATE} IN ('trusted', 'untrusted', 'approved') AND coalesce(rv.rejections, 0) > 0
                   AND rv.trained_run IS NULL THEN 'retrying' ELSE {_STATE} END"""


def _with_review(cur, rows: list[dict]) -> list[dict]:
    """``rows`` of rated answers with their review row's state and decision time (``rv_state``,
    ``decided_at``) and the state they are in (``state``: as _STATE, the default for answers without one)."""
    found: dict[str, tuple] = {}
    for chunk in _chunks(sorted(r["id"] for r in rows)):
        found.update((m, (st, at)) for m, st, at in cur.execute(
            f"SELECT message_id, state, decided_at FROM review WHERE message_id IN ({_placeholders(len(chunk))})",
            chunk).fetchall())
    for r in rows:
        r["rv_state"], r["decided_at"] = found.get(r["id"], (None, None))
        default = "trusted" if (r["rating_user"] or r["correction_user"]) == LOCAL_USER else "untrusted"
        r["state"] = r["rv_state"] or default
    return rows


def _check_review_untrusted(value: str) -> None:
    if value not in REVIEW_UNTRUSTED:
        raise InvalidReview(f"review_untrusted must be one of {REVIEW_UNTRUSTED}, not {value!r}")


def untrusted_trust(review_untrusted: str, rating: str | None, has_correction: bool, origin: str) -> str:
    """What a judgement by a user who is not trusted gets: ``review`` (held for an admin) or ``untrusted``
    (trains, capped). The one rule for a new judgement (the edge) and for one whose trust was revoked.

    Held: any judgement of an answer the model did not write freely (``origin``, see feedback.store_turns);
    under ``review_untrusted`` (settings) ``corrections``, a correction; ``corrections_and_ups``, a
    thumbs-up too; ``off``, nothing else.
    """
    _check_review_untrusted(review_untrusted)
    if origin != MODEL:
        return "review"
    held = review_untrusted != "off" and (
        has_correction or (review_untrusted == "corrections_and_ups" and rating == "up"))
    return "review" if held else "untrusted"


def review_after_rating(cur, message_id: str, user: str, trust: str, has_correction: bool, now: datetime) -> str:
    """Update ``message_id``'s state for a new judgement by ``user`` (inside the rating's transaction);
    returns the state it is in now.

    ``trust``: ``trusted`` (an admin, by role), ``untrusted``, or ``review`` (untrusted and held). A user an
    admin trusts (``user_trust``) is trusted whatever ``trust`` says: read here, in the write transaction,
    so a revocation lands either before the judgement (which is then untrusted) or after it (and takes
    it back), never between a check and the write.
    Discarded and needs-review answers stay so until an admin acts; a pending answer stays pending
    unless a trusted user replaces its content with a correction of their own. Any new untrusted
    judgement voids an earlier approval: an admin approved the content as it was then. An untrusted
    judgement of an answer the model did not write freely (the user wrote it, or forced it) is held.
    ``judged_by`` names whose judgement the trusted state rests on (what a revocation takes back).
    """
    if trust not in TRUST_INPUTS:
        raise InvalidReview(f"trust must be one of {TRUST_INPUTS}, not {trust!r}")
    if trust != "trusted" and user_trusted(cur, user):
        trust = "trusted"
    row = cur.execute("SELECT state, judged_by FROM review WHERE message_id = ?", [message_id]).fetchone()
    old, judged_by = row if row else (None, None)
    if old in ("discarded", "needs_review"):
        return old
    held = None if trust == "trusted" else origin_hold(cur, message_id)
    if held or (old == "pending_review" and not (trust == "trusted" and has_correction)):
        trust = "review"
    state = {"trusted": "trusted", "untrusted": "untrusted", "review": "pending_review"}[trust]
    reason = held or f"judged by {user}, who is not trusted: waits for an admin's review"
    reason = reason if state == "pending_review" else None
    # A trusted thumbs on an answer trusted for someone else's correction changes nothing that trains (a
    # correction is the row's content, whatever the rating): the trust still rests on that correction,
    # so revoking this user's trust later must not send the row back to the queue.
    if not (state == old == "trusted" and not has_correction and judged_by
            and _latest_corrector(cur, message_id) not in (None, user)):
        judged_by = user
    values = {"state": state, "reason": reason, "actor": user, "judged_by": judged_by, "decided_at": now}
    upsert(cur, "review", {"message_id": message_id}, values)
    return state


def _latest_corrector(cur, message_id: str) -> str | None:
    """Who wrote the answer's latest correction (the one that trains, as in _RATED_CTE); None if none."""
    row = cur.execute("""SELECT "user" FROM corrections WHERE message_id = ?
                         ORDER BY created_at DESC, "user" LIMIT 1""", [message_id]).fetchone()
    return row[0] if row else None


def _take_back_trust(cur, user: str, actor: str, now: datetime, review_untrusted: str) -> int:
    """After ``actor`` revoked ``user``'s trust: the answers trusted because of it get what the same judgement
    by an untrusted user gets now (``untrusted_trust`` under ``review_untrusted``), unless their current
    judgement already trained. Returns how many.

    "Because of it": state ``trusted`` and ``user``'s was the judgement it rests on (``judged_by``), so an
    admin's own judgements and corrections (even ones ``user`` rated later), approved rows and other users'
    are not touched (the caller leaves out admins and ``local``, trusted by role). Answers that trained
    under the trust stay as they are (they are in production already) but leave replay (``trust_revoked_at``).
    """
    found = cur.execute("""SELECT rv.message_id, rv.trained_run, runs.cutoff FROM review rv
                           LEFT JOIN runs ON runs.id = rv.trained_run
                           WHERE rv.state = 'trusted' AND rv.judged_by = ?""", [user]).fetchall()
    rated = {r["id"]: r for r in rated_by_ids(cur, [f[0] for f in found])}
    revoked = f"judged by {user} while trusted; {actor} revoked that trust"
    trained, untrained = [], []
    for message_id, trained_run, cutoff in found:
        row = rated.get(message_id)
        if trained_run is not None:
            trained.append(message_id)
        # Trained as judged now: in the window of the run that reached production (a later judgement is not).
        if row is not None and not (trained_run is not None and (cutoff is None or row["rated_at"] < cutoff)):
            untrained.append(row)
    origins = origins_of(cur, [r["id"] for r in untrained])
    back = []
    for row in untrained:
        origin = origins.get(row["id"], MODEL)
        if untrusted_trust(review_untrusted, row["rating"], row["correction"] is not None, origin) == "review":
            # A hold reason already says it waits, as in review_after_rating.
            back.append(["pending_review", HOLD_REASONS.get(origin) or f"{revoked}: waits for an admin's review",
                         row["id"]])
        else:
            back.append(["untrusted", f"{revoked}: trains capped", row["id"]])
    if back:
        cur.executemany("UPDATE review SET state = ?, reason = ?, actor = ?, decided_at = ? WHERE message_id = ?",
                        [[state, reason, actor, now, m] for state, reason, m in back])
    if trained:
        cur.execute("UPDATE review SET trust_revoked_at = ? WHERE message_id IN (SELECT unnest(?))", [now, trained])
    return len(back)


def user_trusted(cur, user: str) -> bool:
    """Whether an admin set ``user``'s feedback to train as given (``set_user_trust``)."""
    row = cur.execute('SELECT trusted FROM user_trust WHERE "user" = ?', [user]).fetchone()
    return bool(row and row[0])


class VersionRequired(InvalidReview):
    """An include that names rows without the version the admin was shown (``ids``: those rows)."""

    def __init__(self, ids: list[str]):
        super().__init__(f"no version for {len(ids)} row(s), e.g. {ids[0]!r}: include the version the review "
                         "listing showed for each row")
        self.ids = ids


class RowsChanged(InvalidReview):
    """An include whose rows were judged again after the admin read them (``ids``); nothing was decided."""

    def __init__(self, ids: list[str]):
        super().__init__(f"{len(ids)} row(s) changed since they were shown, e.g. {ids[0]!r}: read them again")
        self.ids = ids


def row_version(r: dict) -> str:
    """What an admin approves, as a short hash: the answer, the latest rating and correction and who gave
    them, and when it was last judged. Any new judgement changes it, so an include can name what was read."""
    rated_at = r["rated_at"]
    parts = [r["content"], r["rating"], r["rating_user"], r["correction"], r["correction_user"],
             rated_at.isoformat() if rated_at is not None else None]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


class ReviewStore(StoreCore):
    """Review states of rated answers (include, discard, rejections, flags) and per-user trust."""

    # --- what trains ---------------------------------------------------------------------------------
    def trainable_examples(self, since: datetime | None = None, until: datetime | None = None) -> list[RatedExample]:
        """Rated answers that may train: judged in [since, until), or included by an admin in it; not held.

        ``trusted`` on each says whether it trains as given (admin, trusted user, approved) or capped.
        """
        window = [_to_db(since) or _FAR_PAST, _to_db(until) or _FAR_FUTURE]
        with self._read(settle=True) as cur:
            ids = touched_ids(cur, *window, extra_sql=_APPROVED_SQL) if since is not None else None
            if ids is not None and len(ids) <= MAX_KEYED:  # the nightly case: only the window's answers
                rows = [r for r in _with_review(cur, rated_by_ids(cur, ids))
                        if r["state"] not in HELD and (window[0] <= r["rated_at"] < window[1] or (
                            r["rv_state"] == "approved" and window[0] <= r["decided_at"] < window[1]))]
                rows.sort(key=lambda r: (r["rated_at"], r["id"]))
            else:
                cur.execute(_RATED_CTE + _TRAINABLE_SQL, [*window, *window])
                rows = _rows(cur)
            prompts = RatingStore._prompts(cur, rows)
        return [RatedExample(message_id=r["id"], conversation_id=r["conversation_id"],
                             user=r["rating_user"] or r["correction_user"], adapter=r["adapter"], prompt=prompt,
                             answer=r["content"], rating=r["rating"], correction=r["correction"],
                             implicit=bool(r["implicit"]), rated_at=_from_db(r["rated_at"]),
                             trusted=r["state"] in TRUSTED)
                for r, prompt in zip(rows, prompts, strict=True)]

    # --- listing -------------------------------------------------------------------------------------
    def review_rows(self, state: str | None = None, user: str | None = None, limit: int = 50,
                    offset: int = 0) -> tuple[list[dict], int]:
        """Rated answers in ``state`` (one of ``LIST_STATES``; None: all), newest first; and how many match."""
        if state is not None and state not in LIST_STATES:
            raise InvalidReview(f"state must be one of {LIST_STATES}, not {state!r}")
        where = f"WHERE (?::VARCHAR IS NULL OR ({_SHOWN}) = ?) AND (?::VARCHAR IS NULL OR " \
                "coalesce(t.rating_user, t.correction_user) = ?)"
        params = [state, state, user, user]
        with self._read(settle=True) as cur:
            total = cur.execute(_RATED_CTE + f"SELECT count(*) FROM t LEFT JOIN review rv ON rv.message_id = t.id "
                                f"{where}", params).fetchone()[0]
            cur.execute(_RATED_CTE + f"""
                SELECT t.*, {_SHOWN} AS shown, rv.reason, rv.actor, rv.rejections, rv.last_run, rv.last_gate_reason,
                       rv.trained_run, rv.decided_at
                FROM t LEFT JOIN review rv ON rv.message_id = t.id {where}
                ORDER BY t.rated_at DESC, t.id LIMIT ? OFFSET ?""", [*params, limit, offset])
            rows = _rows(cur)
            prompts = RatingStore._prompts(cur, rows)
            origins = origins_of(cur, [r["id"] for r in rows])
        out = []
        for r, prompt in zip(rows, prompts, strict=True):
            last = max((i for i, m in enumerate(prompt) if m["role"] == "user"), default=None)
            out.append({
                "message_id": r["id"], "conversation_id": r["conversation_id"],
                "user": r["rating_user"] or r["correction_user"], "state": r["shown"],
                "prompt": prompt[last]["content"] if last is not None else "",
                # Everything else the answer trains after (system prompt, earlier turns, a client may have
                # written any of them): the last question alone can hide what a correction really teaches.
                "context": [m for i, m in enumerate(prompt) if i != last],
                "answer": r["content"], "rating": r["rating"], "correction": r["correction"],
                "reason": _reason(r), "actor": r["actor"], "rejections": r["rejections"] or 0,
                "last_run": r["last_run"], "trained_run": r["trained_run"],
                "rated_at": _from_db(r["rated_at"]), "decided_at": _from_db(r["decided_at"]),
                "origin": origins.get(r["id"]),  # 'client' / 'constrained': not the model's own answer
                "version": row_version(r),
            })
        return out, total

    def review_counts(self) -> dict[str, int]:
        """How many rated answers are in each listed state."""
        with self._read(settle=True) as cur:
            found = dict(cur.execute(_RATED_CTE + f"""SELECT {_SHOWN} AS shown, count(*) FROM t
                                     LEFT JOIN review rv ON rv.message_id = t.id GROUP BY shown""").fetchall())
        return {s: found.get(s, 0) for s in LIST_STATES}

    # --- an admin's decisions --------------------------------------------------------------------------
    def include_rows(self, message_ids: list[str], actor: str, reason: str = "",
                     versions: dict[str, str] | None = None) -> int:
        """Approve rated answers (pending, needs-review, discarded or any): they train next run, as trusted.

        The rejection count starts again, so an included lesson gets ``retrain_max_rejections`` more tries.
        ``versions`` ({id: the ``version`` of the review row the admin read}) binds the decision to what was
        read: an id without one raises VersionRequired, a row judged again since RowsChanged, and then
        nothing is approved. None approves the rows as they are now, for callers no user can race (the
        offline CLI, with the app stopped).
        """
        return self._decide(message_ids, "approved", actor, reason or f"included by {actor}", reset=True,
                            versions=versions)

    def discard_rows(self, message_ids: list[str], actor: str, reason: str = "") -> int:
        """Take rated answers out of every future training set (until an admin includes them again)."""
        return self._decide(message_ids, "discarded", actor, reason or f"discarded by {actor}", reset=False)

    def unreplayable_message_ids(self) -> set[str]:
        """Rated answers whose rows replay of older snapshots skips: those an admin took out of training, and
        those trained under a trust an admin revoked since (until an admin includes them)."""
        with self._read() as cur:
            return {r[0] for r in cur.execute("""SELECT message_id FROM review
                                                 WHERE state = 'discarded' OR trust_revoked_at IS NOT NULL""").fetchall()}

    def _decide(self, message_ids: list[str], state: str, actor: str, reason: str, reset: bool,
                versions: dict[str, str] | None = None) -> int:
        ids = _checked_ids(message_ids)
        if versions is not None and not isinstance(versions, dict):
            raise InvalidReview("versions must map message ids to versions")
        with self._write() as cur:
            # Stamped inside the lock, so decisions are dated in the order they are written (as ratings are).
            now = _now()
            self._ensure_rows(cur, ids, now)
            known = {r[0] for r in cur.execute("SELECT message_id FROM review WHERE message_id IN (SELECT unnest(?))",
                                               [ids]).fetchall()}
            unknown = [i for i in ids if i not in known]
            if unknown:  # nothing changes when one id is wrong: the caller fixes the list and retries
                raise UnknownMessage(f"no rated answer with id {unknown[0]!r}"
                                     + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
            if versions is not None:  # checked in the write transaction: no judgement can land in between
                missing = [i for i in ids if not versions.get(i)]
                if missing:
                    raise VersionRequired(missing)
                changed = sorted(r["id"] for r in rated_by_ids(cur, ids) if row_version(r) != versions[r["id"]])
                if changed:
                    raise RowsChanged(changed)
            cur.execute(f"""UPDATE review SET state = ?, reason = ?, actor = ?, decided_at = ?
                            {", rejections = 0, trained_run = NULL, trust_revoked_at = NULL" if reset else ""}
                            WHERE message_id IN (SELECT unnest(?))""", [state, reason, actor, now, ids])
        log.info("review: %d answers %s by %s", len(ids), state, actor)
        return len(ids)

    @staticmethod
    def _ensure_rows(cur, ids: list[str], now: datetime) -> None:
        """Give rated answers among ``ids`` that have no review row their default one."""
        cur.execute(_RATED_CTE + """
            INSERT INTO review (message_id, state, actor, judged_by, decided_at)
            SELECT t.id, CASE WHEN coalesce(t.rating_user, t.correction_user) = 'local' THEN 'trusted'
                              ELSE 'untrusted' END,
                   coalesce(t.rating_user, t.correction_user), coalesce(t.rating_user, t.correction_user), ?
            FROM t WHERE t.id IN (SELECT unnest(?::VARCHAR[])) AND t.id NOT IN (SELECT message_id FROM review)""",
                    [now, ids])

    # --- what runs did with them -----------------------------------------------------------------------
    def record_rejection(self, message_ids: list[str], run_id: str, reason: str, max_rejections: int) -> list[str]:
        """Count a rejected run against the answers in it; those in ``max_rejections`` runs now need review.

        Returns the ids set aside. Held answers (an admin's decision came in meanwhile) are left alone.
        """
        if not message_ids:
            return []
        ids = sorted(set(message_ids))
        with self._write() as cur:
            now = _now()  # inside the lock: dated in write order
            self._ensure_rows(cur, ids, now)
            cur.execute("""UPDATE review SET rejections = rejections + 1, last_run = ?, last_gate_reason = ?
                           WHERE message_id IN (SELECT unnest(?)) AND state NOT IN ('pending_review',
                           'needs_review', 'discarded')""", [run_id, reason, ids])
            cur.execute("""UPDATE review SET state = 'needs_review', actor = 'retrain', decided_at = ?,
                           reason = 'in ' || rejections || ' rejected runs; last: ' || coalesce(last_gate_reason, '?')
                           WHERE message_id IN (SELECT unnest(?)) AND last_run = ? AND rejections >= ?
                             AND state NOT IN ('pending_review', 'needs_review', 'discarded')
                           RETURNING message_id""", [now, ids, run_id, max_rejections])
            aside = sorted(r[0] for r in cur.fetchall())
        log.info("run %s rejected: %d answers counted, %d set aside for review", run_id, len(ids), len(aside))
        return aside

    def flag_rows(self, message_ids: list[str], run_id: str, reason: str) -> list[str]:
        """Set aside rated answers a gate check blamed (``needs_review``); unknown ids are ignored."""
        if not message_ids:
            return []
        ids = sorted(set(message_ids))
        with self._write() as cur:
            now = _now()  # inside the lock: dated in write order
            self._ensure_rows(cur, ids, now)
            cur.execute("""UPDATE review SET state = 'needs_review', actor = 'gate', decided_at = ?, last_run = ?,
                           reason = ?, last_gate_reason = ?
                           WHERE message_id IN (SELECT unnest(?)) AND state <> 'discarded' RETURNING message_id""",
                        [now, run_id, f"flagged by the gate: {reason}", reason, ids])
            flagged = sorted(r[0] for r in cur.fetchall())
        log.info("run %s: %d answers flagged for review by the gate", run_id, len(flagged))
        return flagged

    def record_trained(self, message_ids: list[str], run_id: str) -> None:
        """Note that these answers reached the published adapter of ``run_id`` (they are no longer retrying)."""
        if not message_ids:
            return
        ids = sorted(set(message_ids))
        with self._write() as cur:
            now = _now()  # inside the lock: dated in write order
            self._ensure_rows(cur, ids, now)
            cur.execute("UPDATE review SET trained_run = ? WHERE message_id IN (SELECT unnest(?))", [run_id, ids])

    # --- per-user trust ------------------------------------------------------------------------------
    def set_user_trust(self, user: str, trusted: bool, actor: str, *, admin: bool = False,
                       review_untrusted: str = "corrections_and_ups") -> int:
        """An admin's per-user setting: a trusted user's feedback trains as given. Returns how many rated
        answers a revocation took back (0 for anything else).

        Revoking (trusted -> not trusted) takes back, in the same transaction, what the trust let through
        and has not trained yet (``_take_back_trust``): each gets what the same judgement by an untrusted
        user gets under ``review_untrusted`` (the app's setting; the default is the strictest). Granting
        trust again does not re-trust those answers: an admin includes them after reading them. ``admin``:
        ``user`` has the admin role, so their judgements are trusted by role, not by this setting, and a
        revocation takes nothing back (roles live in the users file, which the edge reads and the store
        does not).
        """
        if not user or len(user) > 128:
            raise InvalidReview("user name must have 1 to 128 characters")
        _check_review_untrusted(review_untrusted)
        self._turns.wait()  # a regenerate's implicit thumbs-down judged before this lands before it
        with self._write() as cur:
            now = _now()  # inside the lock: dated in write order
            revoked = user_trusted(cur, user) and not trusted
            upsert(cur, "user_trust", {"user": user}, {"trusted": bool(trusted), "actor": actor, "updated_at": now})
            taken = (_take_back_trust(cur, user, actor, now, review_untrusted)
                     if revoked and not admin and user != LOCAL_USER else 0)
        log.info("user %s %s by %s; %d rated answers taken back", user, "trusted" if trusted else "not trusted",
                 actor, taken)
        return taken

    def user_trusted(self, user: str) -> bool:
        with self._read() as cur:
            return user_trusted(cur, user)

    def list_user_trust(self) -> list[dict]:
        with self._read() as cur:
            rows = _rows(cur.execute('SELECT "user", trusted, actor, updated_at FROM user_trust ORDER BY "user"'))
        return [{**r, "updated_at": _from_db(r["updated_at"])} for r in rows]


def _checked_ids(message_ids: list[str]) -> list[str]:
    if not isinstance(message_ids, list) or not all(isinstance(i, str) for i in message_ids):
        raise InvalidReview("message_ids must be a list of strings")
    ids = sorted(set(message_ids))
    if not ids:
        raise InvalidReview("message_ids is empty")
    if len(ids) > MAX_IDS:
        raise InvalidReview(f"at most {MAX_IDS} message ids per call")
    if any(not i or len(i) > 64 for i in ids):
        raise InvalidReview("a message id has 1 to 64 characters")
    return ids


def _reason(r: dict) -> str | None:
    """The reason in words: the decision's, else (for a retrying answer) the last gate rejection's."""
    if r["shown"] == "retrying":
        return f"in {r['rejections']} rejected run(s), retried next run; last: {r['last_gate_reason']}"
    return r["reason"]
