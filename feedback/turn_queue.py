"""Turns accepted but not yet in DuckDB: journaled first, then applied in order, in batches, by one thread.

Why: a DuckDB statement costs ~1 ms from Python and a turn takes ~5 of them, so storing each turn
synchronously under 32 concurrent chats queued requests behind each other for hundreds of ms. Appending
one line to a journal file costs microseconds; once ``write`` returns the line is in the OS page cache and
survives a crash of this process (``kill -9``), and the journal is replayed into DuckDB at the next start.
It is not fsynced per turn, so a power cut can lose the last moments of turns (DuckDB's WAL has the same
property for its last sync); ratings, votes and everything else stay synchronous DuckDB transactions.
Reads that involve messages call ``wait()`` first, so a caller always sees the turns it was answered.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from feedback.models import TurnRecord

log = logging.getLogger(__name__)
MAX_BATCH = 256


class TurnQueue:
    def __init__(self, journal: Path, apply_batch: Callable[[list[TurnRecord]], None]):
        self.journal = Path(journal)
        self._apply_batch = apply_batch
        self._lock = threading.Lock()  # journal appends + queue order + truncation decisions
        self._done = threading.Condition()
        self._submitted = 0
        self._applied = 0
        self._queue: queue.Queue[TurnRecord | None] = queue.Queue()
        self._file = None
        self._thread: threading.Thread | None = None
        self._keep_journal = False  # set when a batch failed: its turns must survive until a restart

    def pending_from_journal(self) -> list[TurnRecord]:
        """Turns a previous process journaled (some may already be in DuckDB: the caller checks)."""
        if not self.journal.exists():
            return []
        turns = []
        for n, line in enumerate(self.journal.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                turns.append(TurnRecord(**json.loads(line)))
            except (ValueError, TypeError):  # a line cut short by a crash mid-write
                log.warning("journal %s line %d unreadable; skipped", self.journal, n)
        return turns

    def start(self) -> None:
        """Open the journal afresh (after replay) and start the applying thread."""
        self._file = open(self.journal, "w", encoding="utf-8")  # noqa: SIM115 (kept open for appends)
        self._thread = threading.Thread(target=self._run, name="turn-writer", daemon=True)
        self._thread.start()

    def submit(self, turn: TurnRecord) -> None:
        line = json.dumps(asdict(turn), ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()  # into the OS: a process crash can no longer lose it
            self._submitted += 1
            self._queue.put(turn)

    def wait(self, timeout: float | None = 30.0) -> None:
        """Block until every turn submitted before this call is in DuckDB."""
        target = self._submitted
        with self._done:
            self._done.wait_for(lambda: self._applied >= target, timeout=timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                self._apply_batch(batch)
            except Exception:  # the batch applier isolates bad turns; this is a last resort
                log.exception("storing %d turns failed; they stay in the journal for the next start", len(batch))
                self._keep_journal = True
                with self._done:
                    self._applied += len(batch)
                    self._done.notify_all()
                continue
            with self._lock:
                # Everything journaled is applied: start the journal over so it stays small.
                if self._queue.empty() and not self._keep_journal:
                    self._file.seek(0)
                    self._file.truncate()
            with self._done:
                self._applied += len(batch)
                self._done.notify_all()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(60)
        if self._file is not None:
            self._file.close()
            if self._applied >= self._submitted and not self._keep_journal and self.journal.exists():
                os.truncate(self.journal, 0)
