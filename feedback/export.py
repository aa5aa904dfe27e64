"""Export the stored conversations: OpenAI fine-tuning JSONL or one Parquet row per message.

OpenAI JSONL: one ``{"messages": [{"role", "content"}, ...]}`` line per conversation (a branch is its
own conversation). Superseded (regenerated) answers are dropped and a corrected answer is replaced
by its latest correction. A conversation is cut just before an answer whose latest rating is
thumbs-down and that has no correction: what follows was built on an answer users rejected, and
keeping it would teach the model that answer. Trailing non-assistant messages are trimmed and a
conversation left without an assistant answer is skipped, since fine-tuning needs one to learn from.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import date, datetime, time
from itertools import groupby
from pathlib import Path
from typing import Literal

from feedback.store import FeedbackStore

log = logging.getLogger(__name__)

# Keys the OpenAI fine-tuning API accepts on a chat message we produce; anything else is dropped.
OPENAI_MESSAGE_KEYS = ("role", "content")


def export(store: FeedbackStore, out: Path, fmt: Literal["openai", "parquet"], since: date | None = None,
           rated_only: bool = False) -> int:
    """Write the export to ``out`` atomically; returns rows written (conversations or messages)."""
    if fmt not in ("openai", "parquet"):
        raise ValueError(f"unknown export format {fmt!r}; use 'openai' or 'parquet'")
    start = datetime.combine(since, time.min) if since is not None else None
    table = store.export_table(since=start, rated_only=rated_only)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "openai":
            lines = openai_examples(table.to_pylist())
            with tmp.open("w", encoding="utf-8") as f:
                for example in lines:
                    f.write(json.dumps(example, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            written = len(lines)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
            written = table.num_rows
        os.replace(tmp, out)  # readers see the old file or the whole new one, never a partial one
    finally:
        tmp.unlink(missing_ok=True)
    log.info("export written fmt=%s rows=%d path=%s", fmt, written, out)
    return written


def openai_examples(rows: list[dict]) -> list[dict]:
    """Rows of ``FeedbackStore.export_table`` (ordered by conversation, position) -> OpenAI examples."""
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
