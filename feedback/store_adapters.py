"""Traffic-split experiments and the adapter registry (production pointer, events)."""

from __future__ import annotations

import json
import logging

from feedback.errors import ReservedName
from feedback.models import AdapterRecord, Experiment
from feedback.store_core import (
    BASE,
    OWNER_VOTE,
    StoreCore,
    _aware,
    _from_db,
    _loads,
    _now,
    _rows,
    _to_db,
    new_id,
)

log = logging.getLogger(__name__)
PRODUCTION = "production"  # serving.types.PRODUCTION, spelled out for the reason store_core gives for BASE


def _refuse_reserved(name: str, what: str, base_ok: bool = False) -> None:
    """The registry's own guard, under every path that writes it (API, UI, CLI, canary, retrain): a stored
    ``production -> production`` once made the next start-up serve base instead of the promoted adapter."""
    if name == PRODUCTION or (name == BASE and not base_ok):
        raise ReservedName(f"{name!r} is a reserved name, not an adapter version: it cannot be {what}")


class AdapterStore(StoreCore):
    """Traffic-split experiments and the adapter registry (production pointer, events)."""

    # --- traffic-split experiments ---------------------------------------------------------------
    def start_experiment(self, control: str, candidate: str, percent: float, actor: str) -> Experiment:
        """Start a split; an experiment still running ends with outcome "superseded"."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within [0, 100], not {percent}")
        _refuse_reserved(control, "an experiment's control", base_ok=True)
        _refuse_reserved(candidate, "an experiment's candidate")
        exp_id, now = new_id(), _now()
        with self._write() as cur:
            cur.execute("""UPDATE experiments SET ended_at = ?, ended_by = ?, outcome = 'superseded', reason = ?
                           WHERE ended_at IS NULL""", [now, actor, f"superseded by experiment {exp_id}"])
            cur.execute("""INSERT INTO experiments (id, control, candidate, percent, started_at, started_by, numbers)
                           VALUES (?, ?, ?, ?, ?, ?, '{}')""", [exp_id, control, candidate, percent, now, actor])
            cur.execute("""INSERT INTO experiment_steps VALUES (?, 0, ?, ?, ?, 'experiment started', '{}')""",
                        [exp_id, percent, now, actor])
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

    def ramp_experiment(self, experiment_id: str, percent: float, actor: str, reason: str,
                        numbers: dict | None = None) -> int | None:
        """Record the next ramp step and make ``percent`` the share the traffic split reads, in one
        transaction; returns the step's index, or None when the experiment is no longer running."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within [0, 100], not {percent}")
        with self._write() as cur:
            running = cur.execute("SELECT 1 FROM experiments WHERE id = ? AND ended_at IS NULL",
                                  [experiment_id]).fetchone()
            if not running:
                return None
            step = cur.execute("SELECT coalesce(max(step), -1) + 1 FROM experiment_steps WHERE experiment_id = ?",
                               [experiment_id]).fetchone()[0]
            cur.execute("INSERT INTO experiment_steps VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [experiment_id, step, percent, _now(), actor, reason, json.dumps(numbers or {})])
            cur.execute("UPDATE experiments SET percent = ? WHERE id = ?", [percent, experiment_id])
        log.info("experiment %s ramped to %.1f%% (step %d) by %s", experiment_id, percent, step, actor)
        return step

    def experiment_steps(self, experiment_id: str) -> list[dict]:
        """The ramp steps, oldest first: step, percent, at, actor, reason, numbers."""
        with self._read() as cur:
            rows = _rows(cur.execute("""SELECT step, percent, "at", actor, reason, numbers FROM experiment_steps
                                        WHERE experiment_id = ? ORDER BY step""", [experiment_id]))
        return [{**_aware(r, "at"), "numbers": _loads(r["numbers"], {})} for r in rows]

    def experiment_step_counts(self, experiment_id: str, max_per_user: float | None = None) -> list[dict]:
        """Thumbs per arm per ramp step, oldest step first (implicit downs included).

        An answer belongs to the step in force when it was stored, so the canary can compare the arms
        within each step (see retrain/canary.py on why it never pools across steps). ``max_per_user``
        caps what one rater's thumbs weigh in an arm and step (see ``_experiment_ratings``): counts are
        then fractional.
        """
        steps = [{"step": s["step"], "percent": s["percent"], "at": s["at"],
                  "control": {"up": 0, "down": 0}, "candidate": {"up": 0, "down": 0}}
                 for s in self.experiment_steps(experiment_id)]
        for row in self._experiment_ratings(experiment_id, by_hour=False, max_per_user=max_per_user):
            if row["step"] < len(steps) and row["arm"] in ("control", "candidate"):
                steps[row["step"]][row["arm"]] = {"up": row["up"], "down": row["down"]}
        return steps

    def experiment_raters(self, experiment_id: str) -> dict[str, int]:
        """How many different users rated answers in each arm (the canary needs several per arm)."""
        raters = {"control": 0, "candidate": 0}
        with self._read(settle=True) as cur:
            cur.execute("""SELECT m.arm, count(DISTINCT r."user") FROM messages m JOIN ratings r ON r.message_id = m.id
                           WHERE m.experiment_id = ? AND m.role = 'assistant' GROUP BY m.arm""", [experiment_id])
            for arm, n in cur.fetchall():
                raters[arm] = n
        return raters

    def experiment_timeline(self, experiment_id: str, max_per_user: float | None = None) -> list[dict]:
        """Thumbs per arm, ramp step and hour the rating came in, oldest first: hour, step, arm, up, down."""
        return [_aware(r, "hour") for r in self._experiment_ratings(experiment_id, True, max_per_user)]

    def _experiment_ratings(self, experiment_id: str, by_hour: bool, max_per_user: float | None = None) -> list[dict]:
        """Thumbs per (hour,) step and arm. With ``max_per_user``, each rating weighs
        ``min(1, max_per_user / n)``, n being its rater's thumbs in that step and arm: one user's thumbs add up
        to at most ``max_per_user`` judgements at their own up-rate, so a user who rates a hundred answers
        in one arm is not a hundred independent judgements (arms are sticky per user). The weights are
        per step, not per hour, so the hours of a step add up to the step's counts."""
        hour = "date_trunc('hour', r.created_at)" if by_hour else "NULL::TIMESTAMP"
        weight = "1" if max_per_user is None else 'least(1.0, ?::DOUBLE / count(*) OVER (PARTITION BY step, arm, "user"))'
        params = [] if max_per_user is None else [float(max_per_user)]
        with self._read(settle=True) as cur:
            # ASOF: each answer joins the latest step that began at or before it was stored.
            return _rows(cur.execute(f"""
                WITH judged AS (
                    SELECT {hour} AS hour, coalesce(s.step, 0) AS step, m.arm AS arm, r."user" AS "user", r.rating
                    FROM messages m JOIN ratings r ON r.message_id = m.id
                    ASOF LEFT JOIN experiment_steps s ON s.experiment_id = m.experiment_id AND m.created_at >= s."at"
                    WHERE m.experiment_id = ? AND m.role = 'assistant'),
                weighted AS (SELECT *, {weight} AS w FROM judged)
                SELECT hour, step, arm, coalesce(sum(w) FILTER (rating = 'up'), 0) AS up,
                       coalesce(sum(w) FILTER (rating = 'down'), 0) AS down
                FROM weighted GROUP BY ALL ORDER BY hour, step, arm""", [experiment_id, *params]))

    # --- adapter registry ------------------------------------------------------------------------
    def register_adapter(self, rec: AdapterRecord) -> None:
        """Add an adapter version to the registry (or update it when the name exists)."""
        _refuse_reserved(rec.name, "registered")
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
        _refuse_reserved(name, "what production points at", base_ok=True)
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

    def set_adapter_public(self, name: str, public: bool, actor: str) -> None:
        """Open an adapter to every user (``public``) or make it admin-only again."""
        _refuse_reserved(name, "marked public or private (base and production are always open)")
        with self._write() as cur:
            if public:
                cur.execute("""INSERT INTO public_adapters VALUES (?, ?, ?)
                               ON CONFLICT (name) DO UPDATE SET marked_by = excluded.marked_by,
                               marked_at = excluded.marked_at""", [name, actor, _now()])
            else:
                cur.execute("DELETE FROM public_adapters WHERE name = ?", [name])
        log.info("adapter %s public=%s by %s", name, public, actor)

    def public_adapters(self) -> set[str]:
        """Names of the adapters any user may chat with by name (besides ``production`` and ``base``)."""
        with self._read() as cur:
            return {r[0] for r in cur.execute("SELECT name FROM public_adapters").fetchall()}

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
            return _rows(cur.execute(f"""
                SELECT strftime(day, '%Y-%m-%d') AS day, adapter, sum(up)::BIGINT AS up, sum(down)::BIGINT AS down,
                       sum(wins)::BIGINT AS wins, sum(losses)::BIGINT AS losses
                FROM (SELECT r.created_at::DATE AS day, m.adapter, (r.rating = 'up')::INT AS up,
                             (r.rating = 'down')::INT AS down, 0 AS wins, 0 AS losses
                      FROM ratings r JOIN messages m ON m.id = r.message_id
                      UNION ALL
                      SELECT v.created_at::DATE, b.adapter_a, 0, 0, (v.winner = 'a')::INT, (v.winner = 'b')::INT
                      FROM arena_votes v JOIN battles b ON b.id = v.battle_id AND {OWNER_VOTE}
                      UNION ALL
                      SELECT v.created_at::DATE, b.adapter_b, 0, 0, (v.winner = 'b')::INT, (v.winner = 'a')::INT
                      FROM arena_votes v JOIN battles b ON b.id = v.battle_id AND {OWNER_VOTE})
                WHERE adapter IS NOT NULL
                GROUP BY day, adapter ORDER BY day, adapter"""))

