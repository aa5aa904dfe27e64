"""Training runs, training-set snapshots and the embedding cache."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from feedback.errors import UnknownRun
from feedback.store_core import (
    _JSON_RUN_FIELDS,
    _RUN_FIELDS,
    RUN_STATUSES,
    StoreCore,
    _aware,
    _from_db,
    _loads,
    _now,
    _rows,
    _to_db,
    new_id,
)
from feedback.store_ratings import MAX_KEYED, _chunks, _placeholders

log = logging.getLogger(__name__)


class RunStore(StoreCore):
    """Training runs, training-set snapshots and the embedding cache."""

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
        """Cutoff of the latest run that published an adapter: data before it reached one.

        A rejected or failed run never moves it, so its rows are tried again (``store_review`` counts
        how often and sets a row aside after ``retrain_max_rejections``); a lesson is never dropped.
        """
        with self._read() as cur:
            row = cur.execute("""SELECT cutoff FROM runs WHERE status = 'succeeded' AND cutoff IS NOT NULL
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

    def unpublished_snapshot_ids(self) -> set[str]:
        """Snapshots of runs that published no adapter (rejected, failed, skipped): replay skips them,
        since their rows are tried again as new data and may since have been discarded."""
        with self._read() as cur:
            return {r[0] for r in cur.execute("""SELECT snapshot_id FROM runs
                                                 WHERE status <> 'succeeded' AND snapshot_id IS NOT NULL""").fetchall()}

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
        import pyarrow.compute as pc

        unique = sorted(set(keys))
        with self._read() as cur:
            if len(unique) <= MAX_KEYED:
                # Index lookups (embeddings_key, schema v10) in chunks; the model is checked after, since a
                # second condition in the WHERE makes DuckDB scan every cached vector instead.
                parts = []
                for chunk in _chunks(unique):
                    parts.append(cur.sql(f"SELECT key, vector, model FROM embeddings WHERE key IN "
                                         f"({_placeholders(len(chunk))})", params=chunk).to_arrow_table())
                found = pa.concat_tables(parts)
                found = found.filter(pc.equal(found.column("model"), model))
            else:  # most of the cache: one scan is cheaper than the lookups
                cur.register("wanted", pa.table({"key": pa.array(unique, pa.string())}))
                try:
                    found = cur.sql("""SELECT e.key, e.vector FROM embeddings e
                                       SEMI JOIN wanted w ON w.key = e.key WHERE e.model = ?""",
                                    params=[model]).to_arrow_table()
                finally:
                    cur.unregister("wanted")
        return _vectors_from_arrow(found)

    def prune_embeddings(self, models: str | list[str], keep: list[str]) -> int:
        """Delete cached vectors of other models, and of ``models`` (one, or the stages of a cascade) whose key
        is not in ``keep`` (the texts of the rows some snapshot still holds); returns how many went."""
        import pyarrow as pa

        models = [models] if isinstance(models, str) else list(models)
        with self._write() as cur:
            cur.register("keep_keys", pa.table({"key": pa.array(sorted(set(keep)), pa.string())}))
            try:
                cur.execute("""DELETE FROM embeddings WHERE NOT list_contains(?, model)
                               OR key NOT IN (SELECT key FROM keep_keys) RETURNING 1""", [models])
                gone = len(cur.fetchall())
            finally:
                cur.unregister("keep_keys")
        log.info("embedding cache pruned: %d vectors removed, %d keys kept for %s", gone, len(set(keep)),
                 ", ".join(models))
        return gone




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


