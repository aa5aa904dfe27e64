"""Promotion, rollback, archiving, the public flag and the A/B canary: every re-pointing of ``production``
goes through here.

The store's pointer is the record; the backend's alias follows it. Each switch is logged in the store
with who and why (``adapter_events``).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from feedback import ab_stats
from feedback.models import AdapterRecord
from feedback.store import FeedbackStore
from retrain.canary import CanaryPolicy
from retrain.canary_report import decide_now
from serving.adapters import ALIASES, RESERVED, check_name
from serving.errors import ServingError, UnknownAdapter
from serving.types import BASE, PRODUCTION

log = logging.getLogger(__name__)


class PromotionError(Exception):
    """A promotion, rollback or experiment request that cannot be carried out (says why)."""


class Promoter:
    def __init__(self, store: FeedbackStore, backend, settings):
        self.store = store
        self.backend = backend  # None when a CLI cycle runs without the app: only the store is updated
        self.settings = settings
        self._lock = threading.RLock()  # one switch at a time
        self._pending = False  # the last sync found the backend down: resync_if_needed retries

    # --- loading -------------------------------------------------------------------------------
    def loaded(self) -> set[str]:
        """Concrete adapters the backend holds; ``production`` is listed there too, but as an alias."""
        return {a.name for a in self.backend.list_adapters()} - ALIASES if self.backend else set()

    def ensure_loaded(self, name: str) -> None:
        if name == BASE or self.backend is None or name in self.loaded():
            return
        check_name(name)  # before the name becomes a path: no "..", "/", or names too long for the OS
        path = Path(self.settings.adapters_dir) / name
        if not path.is_dir():
            raise UnknownAdapter(f"no adapter {name!r} in {self.settings.adapters_dir}")
        self.backend.load_adapter(name, path)
        log.info("adapter loaded name=%s", name)

    def sync(self) -> bool:
        """Load registered adapters still in use and restore ``production``; False when the backend was down.

        A down backend (a remote engine not up yet) keeps the stored pointer unchecked instead of falling
        back to ``base`` for good; ``resync_if_needed`` finishes the job once it answers.
        """
        with self._lock:
            target = self.store.production()
            if target in ALIASES:
                target = self._repair_production(target)
            if self.backend is not None:
                health = self.backend.health()
                if not health.get("ok"):
                    self._pending = True
                    log.warning("backend not ready at sync (%s): production kept at %s unchecked; "
                                "re-syncing when it answers", health.get("error", "not ok"), target)
                    try:
                        self.backend.set_alias(PRODUCTION, target)
                    except ServingError as exc:
                        log.error("production alias not restored: %s", exc)
                    return False
            loaded = self.loaded()
            for rec in self.store.list_adapter_records():
                if rec.status in ("candidate", "production", "retired"):
                    try:
                        self.ensure_loaded(rec.name)
                    except Exception as exc:  # a broken adapter must not stop the app from serving
                        log.error("adapter %s not loaded at start-up: %s", rec.name, exc)
                elif rec.status == "archived" and rec.name in loaded and rec.name != target:
                    # The local backend loads every adapter directory it finds; an archived one stays out of use.
                    self.backend.unload_adapter(rec.name)
                    log.info("archived adapter %s not served", rec.name)
            if self.backend is not None:
                if target != BASE and target not in self.loaded():
                    log.error("production adapter %s is not loadable; serving base", target)
                    target = BASE
                self.backend.set_alias(PRODUCTION, target)
            self._pending = False
            log.info("production points at %s", target)
            return True

    def _repair_production(self, alias: str) -> str:
        """Re-point a stored ``production -> <alias>`` (written before the store refused it) at the last adapter
        production was switched to, else base; returns the new target."""
        target = next((e["to"] for e in self.store.adapter_events(limit=1000) if e["to"] not in ALIASES), BASE)
        # The alias used to be read as whatever it resolved to at start-up (base): the promoted adapter
        # silently stopped being served. Restoring the last real target is what the admin last asked for.
        log.error("production pointed at %r, an alias, not an adapter (a registry written by an older Tuneloop); "
                  "re-pointing it at %s (%s)", alias, target,
                  "the last adapter it was switched to" if target != BASE else "no earlier switch is recorded")
        self.store.set_production(target, "tuneloop", f"start-up repair: production pointed at the alias {alias!r}",
                                  action="repair")
        return target

    def resync_if_needed(self) -> bool:
        """Run ``sync`` again if the last one found the backend down, or production's adapter is missing
        from it (a restarted vLLM forgets adapters loaded at run time). For a periodic job; True if it synced.
        """
        if self.backend is None:
            return False
        target = self.store.production()
        try:
            missing = target != BASE and target not in self.loaded()
        except ServingError as exc:
            log.warning("resync check failed: %s", exc)
            return False
        if not (self._pending or missing):
            return False
        log.info("re-syncing adapters with the backend (pending=%s, production %s missing=%s)",
                 self._pending, target, missing)
        return self.sync()

    # --- switching -----------------------------------------------------------------------------
    def _switch(self, name: str, actor: str, reason: str, action: str = "promote") -> None:
        with self._lock:
            if name in ALIASES:
                raise PromotionError(f"{name!r} is an alias, not an adapter: name an adapter version or 'base'")
            if name != BASE and self.store.get_adapter(name) is None and name not in self.loaded():
                raise UnknownAdapter(f"unknown adapter {name!r}")
            self.ensure_loaded(name)
            previous = self.backend.resolve(PRODUCTION) if self.backend else None
            if self.backend is not None:
                self.backend.set_alias(PRODUCTION, name)
            try:
                self.store.set_production(name, actor, reason, action)
            except Exception:
                if self.backend is not None and previous is not None:
                    self.backend.set_alias(PRODUCTION, previous)  # keep serving and record in step
                raise
            log.info("production -> %s by %s (%s)", name, actor, reason)
            exp = self.store.active_experiment()
            if exp is not None and exp.candidate != name:
                # Its control arm was the old production and its traffic split would go on serving it:
                # a rollback or another promotion must reach every user, so the experiment ends here.
                self.store.end_experiment(exp.id, "stopped", f"production switched to {name} by {actor} ({action}): "
                                          f"the experiment compared against {exp.control}", actor)

    def promote(self, name: str, actor: str, reason: str) -> None:
        with self._lock:
            self._switch(name, actor, reason)
            exp = self.store.active_experiment()
            if exp is not None and exp.candidate == name:
                self.store.end_experiment(exp.id, "promoted", reason, actor)

    def rollback(self, to: str | None, actor: str, reason: str) -> str:
        """Re-point production at ``to``, or at what it pointed to before the current version."""
        with self._lock:
            current = self.store.production()
            target = to or self._previous_production(current)
            if target is None:
                raise PromotionError("nothing to roll back to: production has never been switched")
            if target == current:
                raise PromotionError(f"production already points at {target!r}")
            self._switch(target, actor, reason, action="rollback")
            return target

    def _previous_production(self, current: str) -> str | None:
        for event in self.store.adapter_events(limit=1000):
            if event.get("to") == current and event.get("from") not in (None, current, *ALIASES):
                return event["from"]
        return None

    def in_use(self, name: str) -> str | None:
        """Why ``name`` must stay loaded (production, or an arm of the running experiment), else None."""
        if name == self.store.production():
            return f"{name!r} is in production; promote another adapter first"
        exp = self.store.active_experiment()
        if exp is not None and name in (exp.control, exp.candidate):
            arm = "candidate" if name == exp.candidate else "control"
            return (f"{name!r} is the {arm} of the running experiment {exp.id}, serving part of production's "
                    "traffic; stop the experiment first")
        return None

    def unload(self, name: str, actor: str) -> None:
        """Unload an adapter from the backend (the engine API's unload), unless production traffic needs it."""
        with self._lock:
            if (why := self.in_use(name)) is not None:
                raise PromotionError(why)
            self.backend.unload_adapter(name)
            log.info("adapter unloaded name=%s by %s", name, actor)

    def archive(self, name: str, actor: str) -> None:
        with self._lock:
            if name in (BASE, PRODUCTION):
                raise PromotionError(f"{name!r} is reserved, not an adapter version")
            if (why := self.in_use(name)) is not None:
                raise PromotionError(why)
            check_name(name)
            registered, loaded = self.store.get_adapter(name) is not None, name in self.loaded()
            if not (registered or loaded):
                raise UnknownAdapter(f"unknown adapter {name!r}")
            if loaded:
                self.backend.unload_adapter(name)
            if not registered:
                # An adapter directory nobody registered (loaded from disk, or over the engine API): recorded
                # now, or the archive would not outlive a restart, which loads every directory it finds.
                self.store.register_adapter(AdapterRecord(name=name, path=str(Path(self.settings.adapters_dir) / name),
                                                          status="archived"))
            else:
                self.store.set_adapter_status(name, "archived")
            if name in self.store.public_adapters():  # archived is out of use for everyone, not admin-only
                self.store.set_adapter_public(name, False, actor)
            log.info("adapter archived name=%s by %s", name, actor)

    def set_public(self, name: str, public: bool, actor: str) -> None:
        """Open an adapter to every user or make it admin-only; ``base`` and ``production`` are always open."""
        if name in RESERVED:
            raise PromotionError(f"{name!r} is open to every user always; only adapter versions are marked public")
        if self.store.get_adapter(name) is None and name not in self.loaded():
            raise UnknownAdapter(f"no adapter named {name!r}")
        self.store.set_adapter_public(name, public, actor)

    # --- canary ----------------------------------------------------------------------------------
    def start_experiment(self, candidate: str, actor: str, percent: float | None = None):
        with self._lock:
            if candidate in RESERVED:
                raise PromotionError(f"{candidate!r} is a reserved name; an experiment's candidate is an adapter version")
            control = self.store.production()
            if candidate == control:
                raise PromotionError(f"{candidate!r} is already production")
            self.ensure_loaded(candidate)
            pct = self.settings.canary_percent if percent is None else percent
            exp = self.store.start_experiment(control, candidate, pct, actor)
            log.info("experiment %s started: %s vs %s at %.1f%% by %s", exp.id, control, candidate, pct, actor)
            return exp

    def stop_experiment(self, actor: str, reason: str) -> None:
        exp = self.store.active_experiment()
        if exp is None:
            raise PromotionError("no experiment is running")
        self.store.end_experiment(exp.id, "stopped", reason, actor)

    def check_canary(self, now: datetime | None = None):
        """Apply the canary policy to the running experiment: ramp, promote, roll back or end; returns
        the decision (or None when no experiment runs). A ramp step is recorded and the traffic split
        reads the new share from the store at the next request."""
        with self._lock:
            exp = self.store.active_experiment()
            if exp is None:
                return None
            decision = decide_now(self.store, exp, CanaryPolicy.from_settings(self.settings), now or datetime.now(UTC))
            if decision.action == "continue":
                return decision
            log.info("canary %s: %s (%s)", exp.id, decision.action, decision.reason)
            if decision.action == "ramp":
                self.store.ramp_experiment(exp.id, decision.next_percent, "canary", decision.reason, decision.numbers)
                return decision
            if decision.action == "promote":
                self._switch(exp.candidate, "canary", decision.reason, action="canary-promote")
            elif decision.action == "rollback":
                self.store.set_adapter_status(exp.candidate, "rejected")
            self.store.end_experiment(exp.id, decision.action, decision.reason, "canary", decision.numbers)
            return decision

    # --- reporting -------------------------------------------------------------------------------
    def leaderboard(self) -> dict:
        """The registry with thumbs-up rates, arena ratings and what is loaded, for /v1/adapters."""
        loaded = {a.name: a for a in self.backend.list_adapters()} if self.backend else {}
        rated = [r for r in self.store.adapter_rating_stats() if r["adapter"]]  # user messages have none
        rates = {r["adapter"]: r for r in ab_stats.up_rates(rated)}
        votes = self.store.arena_vote_counts()  # (a, b, winner, n): counted in SQL, not one object per vote
        arena = {r["adapter"]: r for r in ab_stats.bradley_terry(votes, bootstrap=200)} if votes else {}
        records = {r.name: r for r in self.store.list_adapter_records()}
        names = sorted(set(records) | {n for n in loaded if n != PRODUCTION} | set(rates) | set(arena))
        production = self.store.production()
        rows = []
        for name in names:
            rec = records.get(name)
            rows.append({
                "name": name,
                "status": "production" if name == production else (rec.status if rec else "loaded"),
                "loaded": name in loaded,
                "parent": rec.parent if rec else None,
                "snapshot_id": rec.snapshot_id if rec else None,
                "run_id": rec.run_id if rec else None,
                "gate_metrics": rec.metrics if rec else {},
                "created_at": rec.created_at.isoformat() if rec and rec.created_at else None,
                "thumbs": rates.get(name),
                "arena": arena.get(name),
            })
        rows.sort(key=lambda r: -(r["arena"] or {}).get("rating", float("-inf")))
        return {"production": production, "adapters": rows,
                "pairwise": ab_stats.pairwise_win_rates(votes) if votes else {}}
