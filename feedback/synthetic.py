"""A year of a team's data on Tuneloop's own schema, made by bulk inserts (for bench/scale.py and tests).

``build_year`` writes ``history`` conversations spread over the first 363 days and ``window``
conversations in the last two days (the nightly run's new data), five messages each (system, user,
answer, user, answer). 30% of answers are rated (70% up), 3% corrected; arena votes, 52 adapters
and one succeeded nightly run per day whose last cutoff is the start of the window. Two files built
with the same ``window`` hold the same new rows, so "work sized by the day" can be compared across
history sizes. Everything is ``INSERT ... SELECT`` from ``range()``: a million messages take seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from feedback.schema import migrate

START = datetime(2025, 11, 1)
DAYS = 365
WINDOW_START = START + timedelta(days=DAYS - 2)  # the last run's cutoff: the nightly window opens here
END = START + timedelta(days=DAYS)
N_ADAPTERS = 52

# A conversation's start: history ones evenly over the first 363 days, window ones over the last two.
_CONV = """
CREATE TEMP TABLE syn_conv AS
SELECT n AS i, md5('c' || n) AS id, 'user' || (n % 50) AS "user",
       CASE WHEN i < $history
            THEN $start::TIMESTAMP + to_microseconds(CAST(i * (363 * 86400e6 / $history) AS BIGINT))
            ELSE $window_start::TIMESTAMP + to_microseconds(CAST((i - $history) * (2 * 86400e6 / $window) AS BIGINT))
       END AS created_at
FROM (SELECT i, CASE WHEN i < $history THEN i ELSE 100000000 + i - $history END AS n
      FROM range($history + $window) t(i))
"""
_MESSAGES = """
INSERT INTO messages (id, conversation_id, position, role, content, "user", adapter, base_model,
                      latency_ms, prompt_tokens, completion_tokens, finish_reason, superseded, created_at)
SELECT md5('m' || c.i || '-' || p.pos), c.id, p.pos,
       CASE p.pos WHEN 0 THEN 'system' WHEN 1 THEN 'user' WHEN 3 THEN 'user' ELSE 'assistant' END,
       CASE p.pos
         WHEN 0 THEN 'You are a helpful assistant.'
         WHEN 1 THEN 'How do I set up the ' || (c.i % 997) || ' pipeline for project ' || c.i
                     || CASE WHEN c.i % 101 = 0 THEN ' (mail me at dev' || c.i || '@example.com)' ELSE '' END
                     || '? It fails on step ' || (c.i % 13) || ' with a timeout.'
         WHEN 3 THEN 'Thanks. And what about retries for job ' || (c.i % 389) || ' when the disk is full?'
         ELSE 'Answer ' || c.i || '.' || p.pos || ': check the configuration of step ' || (c.i % 13)
              || ', raise the timeout to ' || (30 + c.i % 90) || ' seconds and rerun the job. '
              || repeat('Keep an eye on the logs while it runs; they say which stage failed. ', 1 + c.i % 4)
       END,
       c."user",
       CASE WHEN p.pos IN (2, 4) THEN 'v' || (1 + least(51, datediff('day', $start::TIMESTAMP, c.created_at) // 7))
       END,
       CASE WHEN p.pos IN (2, 4) THEN 'base-model' END,
       CASE WHEN p.pos IN (2, 4) THEN 800 + c.i % 900 END,
       CASE WHEN p.pos IN (2, 4) THEN 40 + c.i % 200 END,
       CASE WHEN p.pos IN (2, 4) THEN 60 + c.i % 300 END,
       CASE WHEN p.pos IN (2, 4) THEN 'stop' END,
       false, c.created_at + to_seconds(p.pos * 20)
FROM syn_conv c, range(5) p(pos)
ORDER BY c.i, p.pos
"""
# Which answers are judged: a hash of the message id, so the choice is the same in every file.
_JUDGED = """
CREATE TEMP TABLE syn_judged AS
SELECT id, "user", created_at, hash(id || 'r') % 100 AS r, hash(id || 'u') % 100 AS u
FROM messages WHERE role = 'assistant'
"""
_RATINGS = """
INSERT INTO ratings (message_id, "user", rating, comment, implicit, created_at, reason)
SELECT id, "user", CASE WHEN u < 70 THEN 'up' ELSE 'down' END, NULL, false, created_at + INTERVAL 1 MINUTE,
       CASE WHEN u >= 70 AND u < 85 THEN 'wrong' END
FROM syn_judged WHERE r < 30 ORDER BY created_at
"""
_CORRECTIONS = """
INSERT INTO corrections
SELECT id, "user", 'Corrected: rerun step with a longer timeout and check the disk first (' || id || ').',
       created_at + INTERVAL 2 MINUTE
FROM syn_judged WHERE r < 3 ORDER BY created_at
"""
# History battles over the first 363 days, then the same WINDOW_BATTLES in the window of every file.
_BATTLES = """
INSERT INTO battles
SELECT md5('b' || n), 'user' || (n % 50), '[{"role": "user", "content": "Which is better for ' || n || '?"}]',
       'v' || (1 + n % 52), 'Answer A to ' || n, 'v' || (1 + (n * 7 + 3) % 52), 'Answer B to ' || n, '{}',
       CASE WHEN i < $n THEN $start::TIMESTAMP + to_microseconds(CAST(i * (363 * 86400e6 / $n) AS BIGINT))
            ELSE $window_start::TIMESTAMP + to_microseconds(CAST((i - $n) * (2 * 86400e6 / $w) AS BIGINT)) END
FROM (SELECT i, CASE WHEN i < $n THEN i ELSE 100000000 + i - $n END AS n FROM range($n + $w) t(i))
"""
WINDOW_BATTLES = 20
_VOTES = """
INSERT INTO arena_votes
SELECT id, "user", CASE hash(id) % 4 WHEN 0 THEN 'a' WHEN 1 THEN 'b' WHEN 2 THEN 'tie' ELSE 'both_bad' END,
       created_at + INTERVAL 30 SECOND
FROM battles
"""
_ADAPTERS = """
INSERT INTO adapters
SELECT 'v' || i, '/adapters/v' || i, CASE WHEN i > 1 THEN 'v' || (i - 1) END, 'snap' || (i * 7), 'run' || (i * 7),
       '{}', CASE WHEN i = 52 THEN 'production' ELSE 'archived' END,
       $start::TIMESTAMP + to_days(CAST(i * 7 AS INTEGER))
FROM range(1, 53) t(i)
"""
# One nightly run per day; each cutoff is the next midnight, the last one the start of the window.
_RUNS = """
INSERT INTO runs (id, trigger, actor, settings, status, stage, snapshot_id, adapter, cutoff, created_at, started_at,
                  finished_at)
SELECT 'run' || i, 'nightly', 'scheduler', '{}', 'succeeded', 'done', 'snap' || i,
       CASE WHEN i % 7 = 0 THEN 'v' || (i // 7) END,
       least($window_start::TIMESTAMP, $start::TIMESTAMP + to_days(CAST(i AS INTEGER))),
       $start::TIMESTAMP + to_days(CAST(i AS INTEGER)) - INTERVAL 1 SECOND,
       $start::TIMESTAMP + to_days(CAST(i AS INTEGER)), $start::TIMESTAMP + to_days(CAST(i AS INTEGER))
FROM range(1, $days + 1) t(i) WHERE $start::TIMESTAMP + to_days(CAST(i AS INTEGER)) <= $window_start::TIMESTAMP
"""
_SNAPSHOTS = """
INSERT INTO snapshots SELECT snapshot_id, '/datasets/' || snapshot_id, cutoff, '{}', md5(snapshot_id), created_at
FROM runs
"""


def build_year(path: Path, history: int, window: int = 200, battles: int | None = None) -> dict:
    """Write a fresh DuckDB file at ``path`` (on the latest schema) with the data above; returns counts."""
    path = Path(path)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET enable_progress_bar = false")
        migrate(con)
        common = {"start": START, "window_start": WINDOW_START}
        con.execute(_CONV, {**common, "history": history, "window": window})
        con.execute('INSERT INTO conversations (id, "user", created_at) SELECT id, "user", created_at FROM syn_conv')
        con.execute(_MESSAGES, {"start": START})
        con.execute(_JUDGED)
        con.execute(_RATINGS)
        con.execute(_CORRECTIONS)
        n_battles = battles if battles is not None else max(20, (history + window) // 10)
        con.execute(_BATTLES, {**common, "n": n_battles, "w": WINDOW_BATTLES})
        con.execute(_VOTES)
        con.execute(_ADAPTERS, {"start": START})
        con.execute("INSERT INTO pointers VALUES ('production', 'v52')")
        con.execute(_RUNS, {**common, "days": DAYS})
        con.execute(_SNAPSHOTS)
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("conversations", "messages", "ratings", "corrections", "arena_votes", "adapters", "runs")}
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return counts
