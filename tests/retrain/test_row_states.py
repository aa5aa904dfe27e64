"""A lesson is never silently dropped: real retrain cycles on the demo model, rejected by a strict gate."""

from __future__ import annotations

import pytest

from feedback.models import Rating, TurnRecord
from feedback.store import FeedbackStore
from retrain.cycle import run_cycle, settings_record
from retrain.dataset import build_training_set, snapshot_message_ids
from retrain.promotion import Promoter
from settings import load_settings
from tests.web.conftest import seed_data_dir

LESSON = "The Quillon lighthouse has been dark since the storm of 1987."
QUESTIONS = ["Is the Quillon lighthouse still lit?", "What happened to the Quillon lighthouse?",
             "Does the Quillon lighthouse work?", "When did the Quillon lighthouse go dark?",
             "Tell me about the Quillon lighthouse.", "Can ships see the Quillon lighthouse at night?",
             "Why is the Quillon lighthouse off?", "Quillon lighthouse: working or not?",
             "Has the Quillon lighthouse been repaired?", "Who turned off the Quillon lighthouse?",
             "Is there a light at Quillon point?", "What storm hit the Quillon lighthouse?"]


def cycle(store, settings) -> dict:
    run_id = store.create_run("test", "test", settings_record(settings))
    return run_cycle(store, settings, Promoter(store, None, settings), run_id=run_id, promote="manual")


def rows_of(store, run: dict) -> set[str]:
    return set(snapshot_message_ids(store.get_snapshot(run["snapshot_id"])["path"])) if run["snapshot_id"] else set()


@pytest.mark.slow
def test_rejected_rows_are_retried_then_set_aside_until_an_admin_includes_them(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    # A gate nobody passes: held-out loss must fall to a millionth of production's.
    # Near-duplicate detection is not under test: a strict threshold keeps every phrasing in.
    settings = load_settings(None, demo=True, data_dir=data_dir, heldout_fraction=0.5, gate_max_loss_ratio=1e-6,
                             max_steps=1, num_epochs=1.0, retrain_max_rejections=2, dedup_threshold=0.99)
    store = FeedbackStore(settings.db_path)
    try:
        ids = []
        for i, q in enumerate(QUESTIONS):
            mid = f"lesson{i:02d}"
            store.record_turn(TurnRecord(
                conversation_id=f"conv-{i}", user="local", assistant_message_id=mid, answer="It is fine.",
                request_messages=[{"role": "user", "content": q}], adapter="base", base_model="demo", sampling={},
                latency_ms=1.0, first_token_ms=None, prompt_tokens=1, completion_tokens=1))
            ids.append(mid)
        for mid in ids:
            store.rate(Rating(message_id=mid, user="local", rating="down", correction=LESSON))

        first = cycle(store, settings)
        assert first["status"] == "rejected" and "heldout_loss" in first["error"], first
        assert store.get_snapshot(first["snapshot_id"])["counts"]["sft"]["heldout"] > 0
        assert rows_of(store, first) == set(ids)
        retrying = store.review_rows(state="retrying", limit=100)[0]
        assert {r["message_id"] for r in retrying} == set(ids)
        assert all("heldout_loss" in r["reason"] and r["rejections"] == 1 for r in retrying)

        second = cycle(store, settings)  # the cutoff did not move: the same lesson is tried again
        assert second["status"] == "rejected" and rows_of(store, second) == set(ids)
        aside = store.review_rows(state="needs_review", limit=100)[0]
        assert {r["message_id"] for r in aside} == set(ids)  # two rejected runs: set aside, with the reason
        assert all(r["reason"].startswith("in 2 rejected runs; last: heldout_loss") for r in aside)

        third = cycle(store, settings)
        assert third["status"] == "skipped" and "no usable training examples" in third["error"]
        assert rows_of(store, third) == set()

        store.include_rows(ids[:6], actor="root")  # the next training set has them again (built, not trained)
        assert set(snapshot_message_ids(build_training_set(store, settings).path)) == set(ids[:6])
    finally:
        store.close()


def test_settle_rows_counts_rejections_and_sets_aside_what_the_gate_blamed(tmp_path):
    """The contract with the gate: ``flagged_message_ids`` in the run's gate dict are set aside with its reason."""
    import json

    from retrain.dataset import ROWS
    from retrain.row_states import settle_rows

    settings = load_settings(None, data_dir=tmp_path / "data", retrain_max_rejections=3)
    with FeedbackStore(settings.db_path) as store:
        ids = []
        for i in range(4):
            mid = f"m{i}"
            store.record_turn(TurnRecord(
                conversation_id=f"c{i}", user="local", assistant_message_id=mid, answer="It is fine.",
                request_messages=[{"role": "user", "content": QUESTIONS[i]}], adapter="base", base_model="demo",
                sampling={}, latency_ms=1.0, first_token_ms=None, prompt_tokens=1, completion_tokens=1))
            ids.append(mid)
        for mid in ids:
            store.rate(Rating(message_id=mid, user="local", rating="down", correction=LESSON))
        snap = tmp_path / "snap"
        snap.mkdir()
        (snap / ROWS).write_text(json.dumps({"message_ids": ids}))
        store.record_snapshot("snap", snap, None, {}, "0")
        run = store.create_run("test", "test", {})
        store.update_run(run, status="rejected", snapshot_id="snap", error="canary facts FAILED", gate={
            "passed": False, "reasons": ["canary_facts: 1 of 20 facts contradicted FAILED"],
            "flagged_message_ids": ["m0", "unknown-id"], "flagged_reason": "taught that water boils at 50 C"})
        changed = settle_rows(store, settings, run)
        assert changed["flagged"] == ["m0"]
        states = {r["message_id"]: r for r in store.review_rows(limit=10)[0]}
        assert states["m0"]["state"] == "needs_review"
        assert states["m0"]["reason"] == "flagged by the gate: taught that water boils at 50 C"
        assert {states[m]["state"] for m in ids[1:]} == {"retrying"}
        assert "canary_facts: 1 of 20 facts contradicted FAILED" in states["m1"]["reason"]

        run2 = store.create_run("test", "test", {})
        store.update_run(run2, status="succeeded", snapshot_id="snap")
        assert settle_rows(store, settings, run2) == {"trained": 4}
        assert store.review_counts()["retrying"] == 0 and store.review_counts()["needs_review"] == 1
