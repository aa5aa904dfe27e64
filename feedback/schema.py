"""The DuckDB schema as an ordered list of migrations, applied at open inside one transaction.

A migration is only ever appended, never edited: a file at version N is brought to the latest by
running migrations N+1.. in order. Timestamps are stored as naive ``TIMESTAMP`` in UTC (the store
converts at its edge) so values never depend on the session's time zone.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import duckdb

from feedback.errors import SchemaTooNew

log = logging.getLogger(__name__)

# version -> statements. v1: the chat data itself; v2: everything the retrain loop and the arena add;
# v3: review states of rated answers and per-user trust.
# v8: conversation titles, soft delete, thumbs-down reasons. v9, v10: indexes and caches for a year of data.
# v11: where each message came from (the model, the model under a constraint, the client).
# v12: rows trained under a user's trust that an admin revoked stay out of replay.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE conversations (
            id VARCHAR PRIMARY KEY,
            "user" VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL)""",
        # seq orders inserts: "the conversation as it stood when this answer was made" is the latest
        # message per position with a smaller seq (see FeedbackStore.rated_examples).
        "CREATE SEQUENCE message_seq",
        """CREATE TABLE messages (
            id VARCHAR PRIMARY KEY,
            seq BIGINT NOT NULL DEFAULT nextval('message_seq'),
            conversation_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            role VARCHAR NOT NULL,
            content VARCHAR NOT NULL,
            "user" VARCHAR NOT NULL,
            adapter VARCHAR,
            base_model VARCHAR,
            sampling JSON,
            latency_ms DOUBLE,
            first_token_ms DOUBLE,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            finish_reason VARCHAR,
            experiment_id VARCHAR,
            arm VARCHAR,
            replaces VARCHAR,
            superseded BOOLEAN NOT NULL DEFAULT false,
            created_at TIMESTAMP NOT NULL)""",
        "CREATE INDEX messages_conversation ON messages (conversation_id)",
        """CREATE TABLE ratings (
            message_id VARCHAR NOT NULL,
            "user" VARCHAR NOT NULL,
            rating VARCHAR NOT NULL,
            comment VARCHAR,
            implicit BOOLEAN NOT NULL DEFAULT false,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (message_id, "user"))""",
    ]),
    (2, [
        # A conversation whose client-sent history no longer matches what is stored continues as a branch.
        "ALTER TABLE conversations ADD COLUMN parent_id VARCHAR",
        """CREATE TABLE corrections (
            message_id VARCHAR NOT NULL,
            "user" VARCHAR NOT NULL,
            content VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (message_id, "user"))""",
        """CREATE TABLE battles (
            id VARCHAR PRIMARY KEY,
            "user" VARCHAR NOT NULL,
            prompt JSON NOT NULL,
            adapter_a VARCHAR NOT NULL,
            answer_a VARCHAR NOT NULL,
            adapter_b VARCHAR NOT NULL,
            answer_b VARCHAR NOT NULL,
            meta JSON,
            created_at TIMESTAMP NOT NULL)""",
        """CREATE TABLE arena_votes (
            battle_id VARCHAR NOT NULL,
            "user" VARCHAR NOT NULL,
            winner VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (battle_id, "user"))""",
        """CREATE TABLE experiments (
            id VARCHAR PRIMARY KEY,
            control VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            percent DOUBLE NOT NULL,
            started_at TIMESTAMP NOT NULL,
            started_by VARCHAR NOT NULL,
            ended_at TIMESTAMP,
            ended_by VARCHAR,
            outcome VARCHAR,
            reason VARCHAR,
            numbers JSON)""",
        """CREATE TABLE adapters (
            name VARCHAR PRIMARY KEY,
            path VARCHAR NOT NULL,
            parent VARCHAR,
            snapshot_id VARCHAR,
            run_id VARCHAR,
            metrics JSON,
            status VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL)""",
        "CREATE TABLE pointers (name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
        """CREATE TABLE adapter_events (
            id VARCHAR PRIMARY KEY,
            "at" TIMESTAMP NOT NULL,
            actor VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            from_adapter VARCHAR,
            to_adapter VARCHAR,
            reason VARCHAR)""",
        """CREATE TABLE runs (
            id VARCHAR PRIMARY KEY,
            trigger VARCHAR NOT NULL,
            actor VARCHAR NOT NULL,
            settings JSON,
            status VARCHAR NOT NULL,
            stage VARCHAR,
            step INTEGER,
            total_steps INTEGER,
            loss DOUBLE,
            eta_s DOUBLE,
            snapshot_id VARCHAR,
            adapter VARCHAR,
            parent_adapter VARCHAR,
            gate JSON,
            error VARCHAR,
            cutoff TIMESTAMP,
            created_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            finished_at TIMESTAMP)""",
        """CREATE TABLE run_metrics (
            run_id VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            loss DOUBLE,
            eval_loss DOUBLE,
            created_at TIMESTAMP NOT NULL)""",
        """CREATE TABLE snapshots (
            id VARCHAR PRIMARY KEY,
            path VARCHAR NOT NULL,
            cutoff TIMESTAMP,
            counts JSON,
            content_hash VARCHAR,
            created_at TIMESTAMP NOT NULL)""",
        # No primary key: bulk inserts of 100k vectors skip existing keys with an anti-join instead,
        # which is faster than maintaining an ART index, and writes are serialized by the store.
        "CREATE TABLE embeddings (model VARCHAR NOT NULL, key VARCHAR NOT NULL, vector FLOAT[] NOT NULL)",
    ]),
    (3, [
        # One review state per rated answer (feedback/store_review.py says what each state means).
        # An answer without a row here is 'trusted' when judged by the single-user admin 'local', else
        # 'untrusted'. Rejection counts live here too, so a lesson is retried, then set aside, never lost.
        """CREATE TABLE review (
            message_id VARCHAR PRIMARY KEY,
            state VARCHAR NOT NULL,
            reason VARCHAR,
            actor VARCHAR NOT NULL,
            judged_by VARCHAR,
            rejections INTEGER NOT NULL DEFAULT 0,
            last_run VARCHAR,
            last_gate_reason VARCHAR,
            trained_run VARCHAR,
            decided_at TIMESTAMP NOT NULL)""",
        # An admin's per-user trust: trusted users' feedback trains as given, like an admin's.
        """CREATE TABLE user_trust (
            "user" VARCHAR PRIMARY KEY,
            trusted BOOLEAN NOT NULL,
            actor VARCHAR NOT NULL,
            updated_at TIMESTAMP NOT NULL)""",
    ]),
    (4, [
        # A run may train several times (the back-off): each attempt's recipe, gate result and timing.
        "ALTER TABLE runs ADD COLUMN attempts JSON",
    ]),
    (5, [
        # Adapters an admin opened to every user (the others are admin-only; see docs/security.md). A
        # table of its own, not a column: inserts into `adapters` list their values by position.
        """CREATE TABLE public_adapters (
            name VARCHAR PRIMARY KEY,
            marked_by VARCHAR NOT NULL,
            marked_at TIMESTAMP NOT NULL)""",
    ]),
    (6, [
        # The canary's ramp: each share an experiment's candidate had and when it began (step 0 = the
        # start). experiments.percent stays the current share, the one the traffic split reads.
        """CREATE TABLE experiment_steps (
            experiment_id VARCHAR NOT NULL,
            step INTEGER NOT NULL,
            percent DOUBLE NOT NULL,
            "at" TIMESTAMP NOT NULL,
            actor VARCHAR NOT NULL,
            reason VARCHAR,
            numbers JSON,
            PRIMARY KEY (experiment_id, step))""",
        # Experiments from before the ramp had one share for their whole life.
        """INSERT INTO experiment_steps
           SELECT id, 0, percent, started_at, started_by, 'experiment started', '{}' FROM experiments""",
    ]),
    (8, [
        # Conversations a user can name and put away: a NULL title shows the first question; a deleted
        # conversation leaves the user's list but its rated answers stay training data (soft delete).
        "ALTER TABLE conversations ADD COLUMN title VARCHAR",
        "ALTER TABLE conversations ADD COLUMN deleted_at TIMESTAMP",
        # Why a thumbs-down (feedback.store_core.RATING_REASONS); NULL for thumbs-up and unexplained downs.
        "ALTER TABLE ratings ADD COLUMN reason VARCHAR",
    ]),
    (9, [
        # Issue 21: nightly work sized by the window. Ratings and corrections are looked up by answer (the
        # window's answers, the Data tab's page) with IN lists an ART index serves instead of a scan.
        "CREATE INDEX ratings_message ON ratings (message_id)",
        "CREATE INDEX corrections_message ON corrections (message_id)",
        # The PII scrubber's result per text (key: sha256 of the text), so a text this version of the
        # scrubber (retrain.pii.SCRUBBER_VERSION) has scrubbed is not scrubbed again.
        """CREATE TABLE scrubbed (
            key VARCHAR PRIMARY KEY,
            version VARCHAR NOT NULL,
            text VARCHAR NOT NULL,
            counts JSON)""",
    ]),
    (10, [
        # The embedding cache looked up by key (IN lists the index serves), not by a scan of every
        # vector of the model; rows no snapshot needs are pruned (RunStore.prune_embeddings).
        "CREATE INDEX embeddings_key ON embeddings (key)",
    ]),
    (11, [
        # Where a message came from (feedback.store_turns.ORIGINS): 'model', an answer this server generated
        # freely; 'constrained', one generated under a response_format or a forced tool call (the client may
        # have chosen its text, and a training row cannot carry the constraint); 'client', text the client
        # sent (its user, system and tool messages, and any assistant turn it wrote into the history).
        # Rows from before: an answer always has an adapter, a message of the request never does; the
        # turn's sampling names its structured kind ('tools' counts as constrained: whether the call was
        # forced was not recorded).
        "ALTER TABLE messages ADD COLUMN origin VARCHAR",
        """UPDATE messages SET origin = CASE
               WHEN role <> 'assistant' OR adapter IS NULL THEN 'client'
               WHEN json_extract_string(sampling, '$.structured') IS NOT NULL THEN 'constrained'
               ELSE 'model' END""",
    ]),
    (12, [
        # When an admin revoked the trust an answer's trained judgement was made under (ReviewStore.
        # set_user_trust): replay of older snapshots skips its rows, as it skips discarded answers'.
        "ALTER TABLE review ADD COLUMN trust_revoked_at TIMESTAMP",
    ]),
]

LATEST = MIGRATIONS[-1][0]


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version recorded in the file; 0 for an empty file."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'").fetchone()[0]
    if not exists:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] or 0


def migrate(con: duckdb.DuckDBPyConnection, target: int | None = None) -> int:
    """Bring the file to ``target`` (default: latest) in one transaction; returns the version now.

    ``target`` below latest exists for tests that build a file as an older Tuneloop would have.
    """
    target = LATEST if target is None else target
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
        version = current_version(con)
        if version > LATEST:
            raise SchemaTooNew(f"database schema v{version} is newer than this Tuneloop (v{LATEST})")
        for number, statements in MIGRATIONS:
            if version < number <= target:
                for sql in statements:
                    con.execute(sql)
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [number, datetime.now(UTC).replace(tzinfo=None)])
                log.info("schema migrated to v%d", number)
                version = number
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return version
