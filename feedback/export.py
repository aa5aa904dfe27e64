"""Export the stored conversations: OpenAI fine-tuning JSONL or one Parquet row per message.

OpenAI JSONL: one ``{"messages": [{"role", "content"}, ...]}`` line per conversation (a branch is its
own conversation). Superseded (regenerated) answers are dropped and a corrected answer is replaced
by its latest correction. A conversation is cut just before an answer whose latest rating is
thumbs-down and that has no correction: what follows was built on an answer users rejected, and
keeping it would teach the model that answer. Trailing non-assistant messages are trimmed and a
conversation left without an assistant answer is skipped, since fine-tuning needs one to learn from.
The lines hold nothing but ``messages`` of ``role`` and ``content``: the format has no place for metadata.

Parquet: every message with its metadata (``FeedbackStore.export_batches``), ``origin`` among it: whether
the model wrote the answer freely (``model``), under a constraint (``constrained``), or the client sent it
(``client``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time
from itertools import groupby
from pathlib import Path
from typing import Literal

from feedback.store import FeedbackStore

log = logging.getLogger(__name__)

# Keys the OpenAI fine-tuning API accepts on a chat message we produce; anything else is dropped.
OPENAI_MESSAGE_KEYS = ("role", "content")


def export(store: FeedbackStore, out: Path, fmt: Literal["openai", "parquet"], since: date | None = None,
           rated_only: bool = False, replace: bool = True) -> int:
    """Write the export to ``out`` atomically; returns rows written (conversations or messages).

    Written a batch of rows at a time (``FeedbackStore.export_batches``), so memory stays flat
    however large the export is. Without ``replace`` an existing ``out`` raises ``FileExistsError``
    (see ``written_to``).
    """
    if fmt not in ("openai", "parquet"):
        raise ValueError(f"unknown export format {fmt!r}; use 'openai' or 'parquet'")
    start = datetime.combine(since, time.min) if since is not None else None
    batches = store.export_batches(since=start, rated_only=rated_only)
    written = 0
    with written_to(Path(out), replace) as tmp:
        if fmt == "openai":
            with tmp.open("w", encoding="utf-8") as f:
                for rows in _conversations(batches):
                    for example in openai_examples(rows):
                        f.write(json.dumps(example, ensure_ascii=False) + "\n")
                        written += 1
                f.flush()
                os.fsync(f.fileno())
        else:
            import pyarrow.parquet as pq

            writer = None
            try:
                for batch in batches:
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, batch.schema)
                    writer.write_batch(batch)
                    written += batch.num_rows
                if writer is None:  # nothing selected: an empty file with the export's columns
                    writer = pq.ParquetWriter(tmp, store.export_table(since=start, rated_only=rated_only).schema)
            finally:
                if writer is not None:
                    writer.close()
    log.info("export written fmt=%s rows=%d path=%s", fmt, written, out)
    return written


@contextlib.contextmanager
def written_to(out: Path, replace: bool) -> Iterator[Path]:
    """A fresh temp file beside ``out`` to write; when the block ends without error it becomes ``out`` whole.

    Readers see the old file or the whole new one, never a partial one, and the temp file is gone either
    way. Without ``replace`` the file is linked in, which fails if ``out`` exists by then: a file created
    after the caller checked is never replaced (``FileExistsError``). A temp name no one can guess, so
    nothing placed there in advance (a symlink) is written through.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if replace:
            os.replace(tmp, out)
        else:
            _link_new(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, out: Path) -> None:
    """``tmp`` at ``out``, which must not exist; ``FileExistsError`` if it does."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise
    except OSError:
        # A file system without hard links (FAT, some network shares): create exclusively, then copy. A
        # reader may see it grow, but no file that was there is lost.
        with open(out, "xb") as dst:
            try:
                with open(tmp, "rb") as src:
                    shutil.copyfileobj(src, dst)
            except BaseException:
                out.unlink(missing_ok=True)
                raise


def _conversations(batches) -> Iterator[list[dict]]:
    """The rows of each conversation in turn, from record batches in conversation order."""
    pending: list[dict] = []
    for batch in batches:
        for cid, group in groupby(batch.to_pylist(), key=lambda r: r["conversation_id"]):
            if pending and pending[0]["conversation_id"] != cid:
                yield pending
                pending = []
            pending.extend(group)
    if pending:
        yield pending


def openai_examples(rows: list[dict]) -> list[dict]:
    """Rows of ``FeedbackStore.export_batches`` (ordered by conversation, position) -> OpenAI examples.

    """
    examples = []
    for _cid, group in groupby(rows, key=lambda r: r["conversation_id"]):
        messages = []
        for row in group:
            if row["superseded"]:
                continue
            content = row["content"]
            if row["role"] == "assistant":
                if row["correction"] is not None:
                    content = row["correction"]
                elif row["rating"] == "down":
                    break
            messages.append({"role": row["role"], "content": content})
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if messages:
            examples.append({"messages": [{k: m[k] for k in OPENAI_MESSAGE_KEYS} for m in messages]})
    return examples
