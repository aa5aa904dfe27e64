"""Runs retrain cycles one at a time, in the background, for the scheduler, the admin button and the CLI."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class RetrainRunner:
    def __init__(self, store, settings, promoter, on_finished=None):
        self.store = store
        self.settings = settings
        self.promoter = promoter
        self._on_finished = on_finished  # metrics hook: called with the final run record
        self._lock = threading.Lock()  # never two cycles at once, whoever asks
        self._current: str | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()

    @property
    def current_run(self) -> str | None:
        return self._current

    def trigger(self, actor: str, trigger: str, promote: str | None = None, force: bool = True,
                wait: bool = False) -> dict:
        """Start a cycle (or report the one running); with ``wait`` return its final record."""
        if not self._lock.acquire(blocking=False):
            run = self.store.get_run(self._current) if self._current else None
            return {"status": "already_running", "run": run}
        try:
            from retrain.cycle import settings_record

            run_id = self.store.create_run(trigger, actor, settings_record(self.settings))
            self._current = run_id
            self._cancel.clear()
            self._thread = threading.Thread(target=self._run, args=(run_id, promote, force),
                                            name=f"retrain-{run_id[:8]}", daemon=True)
            self._thread.start()
        except BaseException:
            self._current = None
            self._lock.release()
            raise
        log.info("retrain run %s started by %s (%s)", run_id, actor, trigger)
        if wait:
            self._thread.join()
        return {"status": "started" if not wait else "finished", "run": self.store.get_run(run_id)}

    def _run(self, run_id: str, promote: str | None, force: bool) -> None:
        try:
            # Imported here, not at the top: the training-set and training modules pull in
            # sentence-transformers and TRL, which the web process needs only when a cycle runs.
            from retrain.cycle import run_cycle

            final = run_cycle(self.store, self.settings, self.promoter, run_id=run_id, promote=promote,
                              force=force, should_cancel=self._cancel.is_set)
            if self._on_finished is not None and final is not None:
                self._on_finished(final)
        finally:
            self._current = None
            self._lock.release()

    def scheduled(self) -> None:
        """The cron job: skips (recorded) when too little new data arrived."""
        self.trigger(actor="scheduler", trigger="schedule", force=False, wait=True)

    def shutdown(self, timeout: float = 30.0) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)
