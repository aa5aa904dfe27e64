"""A short canary through the real app: traffic split, store, ramp steps, decision, and the Adapters panel."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from feedback.models import Rating
from serving.types import SamplingParams
from tests.web.conftest import seed_data_dir, start_app
from web.auth import Principal
from web.ui_canary import canary_panel, rates_svg, summary_markdown


@pytest.fixture
def canary_app(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    # Small steps so that a short test walks the whole ramp; the rule itself is the default one.
    app = start_app(data_dir, temperature=0.0, canary_percent=10, canary_ramp=[25, 50],
                    canary_ramp_min_judgements=4, canary_min_judgements=10)
    yield app
    app.stop()


def test_a_better_candidate_ramps_up_and_is_promoted(canary_app):
    ctx, rng = canary_app.ctx, random.Random(5)
    exp = ctx.promoter.start_experiment("demo-b", actor="admin")
    assert exp.percent == 10
    routed: dict[float, Counter] = {}
    decision, served = None, 0
    while served < 600:
        share = ctx.store.active_experiment().percent
        for _ in range(10):
            served += 1
            turn = ctx.chat.complete(Principal(f"user{served}", "user"), [{"role": "user", "content": "hi"}], "production",
                                     SamplingParams(max_tokens=1, temperature=0.0))
            stored = ctx.store.get_message(turn.message_id)
            routed.setdefault(share, Counter())[stored.arm] += 1
            assert stored.adapter == ("demo-b" if stored.arm == "candidate" else ctx.store.production())
            up = rng.random() < (0.95 if stored.arm == "candidate" else 0.3)
            ctx.store.rate(Rating(message_id=turn.message_id, user=f"user{served}", rating="up" if up else "down"))
        decision = ctx.promoter.check_canary()
        if decision.action not in ("continue", "ramp"):
            break
    assert decision.action == "promote", decision.reason
    assert ctx.store.production() == "demo-b" and ctx.store.active_experiment() is None
    steps = ctx.store.experiment_steps(exp.id)
    assert [s["percent"] for s in steps] == [10, 25, 50]
    assert [s["actor"] for s in steps] == ["admin", "canary", "canary"] and "10% -> 25%" in steps[1]["reason"]
    # the split followed the share: a few candidates at 10%, about half at 50%
    at_50 = routed[50.0]
    assert routed[10.0]["candidate"] < routed[10.0]["control"] and at_50["candidate"] > 0.25 * at_50.total()
    ended = ctx.store.list_experiments()[0]
    assert ended.outcome == "promote" and ended.reason.startswith("Promoted") and ended.numbers["step"] == 2

    with canary_app.client() as c:  # the same report over the admin API
        report = c.get("/v1/admin/experiments/current").json()["report"]
    assert report["experiment"]["id"] == exp.id and report["status"] == ended.reason
    assert [s["percent"] for s in report["steps"]] == [10, 25, 50] and report["points"]
    last = report["points"][-1]
    assert last["candidate"]["lo"] <= last["candidate"]["rate"] <= last["candidate"]["hi"]
    assert last["progress_better"] >= 1.0 > last["progress_harm"]

    summary, charts, frame = canary_panel(ctx)
    assert "ended: **promote**" in summary and "Promoted" in summary and "50%" in summary
    assert charts.count("<svg") == 2 and "candidate (95% band)" in charts
    assert list(frame["percent"]) == [10, 25, 50]


def test_panel_without_experiments():
    assert summary_markdown(None) == "No canary experiment yet."
    assert "No judgements" in rates_svg(None)
