"""The canary applied to a real store: thumbs per arm decide promotion or rollback, with their numbers."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from feedback.models import AdapterRecord, Rating, TurnRecord
from feedback.store import FeedbackStore
from retrain.promotion import Promoter
from settings import load_settings


@pytest.fixture
def promoter(tmp_path):
    settings = load_settings(None, data_dir=tmp_path / "data", canary_min_judgements=50)
    store = FeedbackStore(settings.db_path)
    store.register_adapter(AdapterRecord(name="v1", path=str(tmp_path / "v1"), status="candidate"))
    yield Promoter(store, None, settings)
    store.close()


def judge(store: FeedbackStore, experiment_id: str, arm: str, n: int, up_rate: float, rng: random.Random) -> None:
    for _ in range(n):
        message_id = uuid.uuid4().hex
        store.record_turn(TurnRecord(
            conversation_id=uuid.uuid4().hex, user=f"u{rng.randrange(10_000)}",
            request_messages=[{"role": "user", "content": "hi"}], assistant_message_id=message_id, answer="hello",
            adapter="v1" if arm == "candidate" else "base", base_model="demo", sampling={}, latency_ms=1.0,
            first_token_ms=1.0, prompt_tokens=1, completion_tokens=1, experiment_id=experiment_id, arm=arm))
        store.rate(Rating(message_id=message_id, user="rater", rating="up" if rng.random() < up_rate else "down"))


def test_better_candidate_is_promoted_with_its_numbers(promoter):
    store, rng = promoter.store, random.Random(1)
    exp = promoter.start_experiment("v1", actor="admin", percent=50)
    judge(store, exp.id, "control", 10, 0.4, rng)
    judge(store, exp.id, "candidate", 10, 0.9, rng)
    assert promoter.check_canary().action == "continue"  # too little data, whatever it looks like
    judge(store, exp.id, "control", 60, 0.4, rng)
    judge(store, exp.id, "candidate", 60, 0.8, rng)
    decision = promoter.check_canary()
    assert decision.action == "promote" and decision.numbers["e_better"] >= decision.numbers["promote_at"]
    assert store.production() == "v1"
    ended = store.list_experiments()[0]
    assert ended.outcome == "promote" and ended.numbers["candidate"]["n"] >= 50
    assert store.adapter_events()[0]["actor"] == "canary"
    assert store.active_experiment() is None


def test_worse_candidate_is_rolled_back(promoter):
    store, rng = promoter.store, random.Random(2)
    exp = promoter.start_experiment("v1", actor="admin", percent=50)
    judge(store, exp.id, "control", 70, 0.8, rng)
    judge(store, exp.id, "candidate", 70, 0.4, rng)
    assert promoter.check_canary().action == "rollback"
    assert store.production() == "base" and store.get_adapter("v1").status == "rejected"


def test_experiment_ends_after_the_time_limit(promoter):
    store, rng = promoter.store, random.Random(3)
    exp = promoter.start_experiment("v1", actor="admin", percent=50)
    judge(store, exp.id, "control", 60, 0.6, rng)
    judge(store, exp.id, "candidate", 60, 0.6, rng)
    later = datetime.now(UTC) + timedelta(hours=promoter.settings.canary_max_hours + 1)
    decision = promoter.check_canary(now=later)
    assert decision.action == "end" and store.production() == "base"
