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
