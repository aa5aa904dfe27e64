"""The canary applied to a real store: thumbs per arm decide promotion or rollback, with their numbers; switches
that name an alias are refused, and a pointer an older Tuneloop left on the alias is repaired at start-up."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from feedback.models import AdapterRecord, Rating, TurnRecord
from feedback.store import FeedbackStore
from retrain.promotion import Promoter, PromotionError
from serving.errors import UnknownAdapter
from settings import load_settings
from tests.feedback.feedback_helpers import write_production_alias


@pytest.fixture
def promoter(tmp_path):
    settings = load_settings(None, data_dir=tmp_path / "data", canary_min_judgements=50)
    store = FeedbackStore(settings.db_path)
    store.register_adapter(AdapterRecord(name="v1", path=str(tmp_path / "v1"), status="candidate"))
    promoter = Promoter(store, None, settings)
    yield promoter
    promoter.store.close()  # a test may have reopened it


def judge(store: FeedbackStore, experiment_id: str, arm: str, n: int, up_rate: float, rng: random.Random) -> None:
    for _ in range(n):
        message_id, chatter = uuid.uuid4().hex, f"u{rng.randrange(10_000)}"
        store.record_turn(TurnRecord(
            conversation_id=uuid.uuid4().hex, user=chatter,
            request_messages=[{"role": "user", "content": "hi"}], assistant_message_id=message_id, answer="hello",
            adapter="v1" if arm == "candidate" else "base", base_model="demo", sampling={}, latency_ms=1.0,
            first_token_ms=1.0, prompt_tokens=1, completion_tokens=1, experiment_id=experiment_id, arm=arm))
        store.rate(Rating(message_id=message_id, user=chatter, rating="up" if rng.random() < up_rate else "down"))


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


# Promoting the alias itself stored production -> production (see test_registry_refuses_reserved_names);
# the promoter says why before the store is reached, on every path (API, UI, CLI, canary).
def test_switches_naming_an_alias_are_refused(promoter):
    promoter.promote("v1", actor="admin", reason="first")
    for attempt in (lambda: promoter.promote("production", actor="admin", reason=""),
                    lambda: promoter.rollback(to="production", actor="admin", reason=""),
                    lambda: promoter.start_experiment("production", actor="admin"),
                    lambda: promoter.start_experiment("base", actor="admin"),
                    lambda: promoter.set_public("production", True, actor="admin"),
                    lambda: promoter.set_public("base", True, actor="admin")):
        with pytest.raises(PromotionError, match="alias|reserved|always"):
            attempt()
    with pytest.raises(UnknownAdapter):
        promoter.set_public("nope", True, actor="admin")
    promoter.set_public("v1", True, actor="admin")
    assert promoter.store.production() == "v1" and promoter.store.public_adapters() == {"v1"}


def _reopen_with_alias_pointer(promoter, previous):
    settings = promoter.settings
    promoter.store.close()
    write_production_alias(settings.db_path, previous)
    promoter.store = FeedbackStore(settings.db_path)


def test_startup_repairs_a_pointer_at_the_alias(promoter, caplog):
    promoter.promote("v1", actor="admin", reason="first")
    _reopen_with_alias_pointer(promoter, previous="v1")
    with caplog.at_level(logging.ERROR, logger="retrain.promotion"):
        assert promoter.sync()
    assert "production pointed at 'production', an alias" in caplog.text
    store = promoter.store
    assert store.production() == "v1" and store.get_adapter("v1").status == "production"
    event = store.adapter_events(limit=1)[0]
    assert (event["action"], event["from"], event["to"], event["actor"]) == ("repair", "production", "v1", "tuneloop")
    # The alias in the history is skipped: the version before v1 is base.
    assert promoter.rollback(None, actor="admin", reason="") == "base"


def test_startup_repair_falls_back_to_base_without_history(promoter, caplog):
    _reopen_with_alias_pointer(promoter, previous=None)
    with caplog.at_level(logging.ERROR, logger="retrain.promotion"):
        promoter.sync()
    assert "no earlier switch is recorded" in caplog.text
    assert promoter.store.production() == "base"


def test_one_user_cannot_decide_an_experiment(promoter):
    """Honest users like both arms alike; one user, sticky in the control arm, thumbs down 150 of its
    answers. Counted per answer that was a promotion ("candidate 50% vs production 8%"); weighed per user
    it is one more rater."""
    store, rng = promoter.store, random.Random(7)
    exp = promoter.start_experiment("v1", actor="admin", percent=50)

    def chat_and_rate(user: str, arm: str, rating: str) -> None:
        message_id = uuid.uuid4().hex
        store.record_turn(TurnRecord(
            conversation_id=uuid.uuid4().hex, user=user, request_messages=[{"role": "user", "content": "hi"}],
            assistant_message_id=message_id, answer="hello", adapter="v1" if arm == "candidate" else "base",
            base_model="demo", sampling={}, latency_ms=1.0, first_token_ms=1.0, prompt_tokens=1,
            completion_tokens=1, experiment_id=exp.id, arm=arm))
        store.rate(Rating(message_id=message_id, user=user, rating=rating))

    for i in range(40):
        for _ in range(4):
            chat_and_rate(f"honest{i}", ("control", "candidate")[i % 2], "up" if rng.random() < 0.5 else "down")
    for _ in range(150):
        chat_and_rate("mallory", "control", "down")

    raw = store.experiment_step_counts(exp.id)[0]
    assert raw["control"]["down"] >= 150  # what the canary used to decide on
    weighed = store.experiment_step_counts(exp.id, max_per_user=5)[0]
    assert weighed["control"]["down"] < raw["control"]["down"] - 140
    assert store.experiment_raters(exp.id) == {"control": 21, "candidate": 20}
    decision = promoter.check_canary()
    assert decision.action == "continue", decision.reason
    assert store.production() == "base" and store.active_experiment() is not None


def test_a_user_weighs_at_most_the_cap_at_their_own_rate(promoter):
    store = promoter.store
    exp = promoter.start_experiment("v1", actor="admin", percent=50)
    for user, ratings in (("a", ["up"] * 15 + ["down"] * 5), ("b", ["up", "down"]), ("c", ["down"])):
        for rating in ratings:
            message_id = uuid.uuid4().hex
            store.record_turn(TurnRecord(
                conversation_id=uuid.uuid4().hex, user=user, request_messages=[{"role": "user", "content": "q"}],
                assistant_message_id=message_id, answer="a", adapter="base", base_model="demo", sampling={},
                latency_ms=1.0, first_token_ms=1.0, prompt_tokens=1, completion_tokens=1, experiment_id=exp.id,
                arm="control"))
            store.rate(Rating(message_id=message_id, user=user, rating=rating))
    [counts] = store.experiment_step_counts(exp.id, max_per_user=4)
    # a: 20 thumbs at 75% up weigh 4 (3 up, 1 down); b and c are under the cap and count as they are
    assert counts["control"] == pytest.approx({"up": 3 + 1, "down": 1 + 1 + 1})
    assert store.experiment_step_counts(exp.id)[0]["control"] == {"up": 16, "down": 7}
    hours = store.experiment_timeline(exp.id, max_per_user=4)
    assert sum(r["up"] for r in hours) == pytest.approx(4) and sum(r["down"] for r in hours) == pytest.approx(3)
