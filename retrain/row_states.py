"""After a run ends: what it means for the rated answers in its training set.

- published (``succeeded``): the answers reached an adapter; the cutoff moves past them (``last_cutoff``).
- ``rejected``: the cutoff stays, so the answers are tried again next run; each counts one rejection,
  and one in ``retrain_max_rejections`` rejected runs is set aside as needs-review with the gate's reason.
- failed or skipped: nothing (the data was never judged).

Whatever the status, answers a gate check blamed are set aside. The contract with the gate: when the
run's ``gate`` dict holds ``flagged_message_ids`` (assistant message ids), those answers become
needs-review with ``flagged_reason`` (words), or else the run's failing gate reasons.
"""

from __future__ import annotations

import logging

from retrain.dataset import snapshot_message_ids

log = logging.getLogger(__name__)


def settle_rows(store, settings, run_id: str) -> dict:
    """Update the review states of the answers in run ``run_id`` from its final record; returns what changed."""
    run = store.get_run(run_id)
    if run is None:
        return {}
    gate = run.get("gate") or {}
    reason = gate_reason(run)
    changed: dict = {}
    flagged = [i for i in gate.get("flagged_message_ids") or [] if isinstance(i, str)]
    if flagged:
        changed["flagged"] = store.flag_rows(flagged, run_id, gate.get("flagged_reason") or reason)
    snapshot = store.get_snapshot(run["snapshot_id"]) if run.get("snapshot_id") else None
    ids = snapshot_message_ids(snapshot["path"]) if snapshot else []
    if run["status"] == "rejected":
        changed["needs_review"] = store.record_rejection(ids, run_id, reason, settings.retrain_max_rejections)
        changed["retried"] = len(ids) - len(changed["needs_review"])
    elif run["status"] == "succeeded":
        store.record_trained(ids, run_id)
        changed["trained"] = len(ids)
    return changed


def settle_rows_logged(store, settings, run_id: str) -> None:
    """``settle_rows`` for the end of ``run_cycle``: a failure here is logged, never hides the run's own result."""
    try:
        changed = settle_rows(store, settings, run_id)
    except Exception:
        log.exception("run %s: updating the review states of its rows failed", run_id)
        return
    if changed:
        log.info("run %s rows: %s", run_id, {k: v if isinstance(v, int) else len(v) for k, v in changed.items()})


def gate_reason(run: dict) -> str:
    """The gate's failing checks in words (what the Data tab shows beside a rejected answer)."""
    gate = run.get("gate") or {}
    failed = [r for r in gate.get("reasons") or [] if "FAILED" in r]
    return "; ".join(failed) or run.get("error") or f"run {run['id']} {run['status']}"
