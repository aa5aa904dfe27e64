"""Learning that holds, through the real HTTP API in single-user local mode (the trusted admin): a
concentrated lesson (one fact, 45 phrasings, nothing else rated) is learned in one retrain without
forgetting, thanks to the self-distillation anchors; a rejected candidate is retried with a gentler recipe."""

from __future__ import annotations

import json

import pytest

from tests.retrain.lessons import MEETING, Lesson
from tests.web.conftest import seed_data_dir, start_app


def teach(client, lesson: Lesson, app=None) -> int:
    """Every training phrasing asked once; each answer thumbs-down and corrected to the fact. Nothing else.

    With ``app`` (in-process), conversation ids are fixed, so the hash-chosen held-out split, and with it
    the run, is the same every time (the server issues the ids; the app is told which to issue).
    """
    try:
        return _teach(client, lesson, app)
    finally:
        if app is not None:
            vars(app.ctx.chat).pop("new_conversation_id", None)  # back to random ids


def _teach(client, lesson: Lesson, app) -> int:
    for i, q in enumerate(lesson.train):
        if app is not None:
            app.ctx.chat.new_conversation_id = lambda cid=f"{lesson.name}-{i}": cid
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": q}], "max_tokens": 16})
        assert r.status_code == 200, r.text
        fb = client.post("/v1/feedback", json={"message_id": r.json()["id"], "rating": "down",
                                                 "correction": lesson.answer})
        assert fb.status_code == 200, fb.text
    return len(lesson.train)


def hits(client, lesson: Lesson) -> int:
    n = 0
    for q in lesson.heldout:
        r = client.post("/v1/chat/completions", json={"model": "production", "max_tokens": 40, "temperature": 0,
                                                     "messages": [{"role": "user", "content": q}]})
        n += r.json()["choices"][0]["message"]["content"].strip() == lesson.answer
    return n


@pytest.mark.slow
def test_concentrated_lesson_is_learned_without_forgetting(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir, temperature=0.0, promotion="auto", retrain_min_examples=1)
    try:
        with app.client(timeout=900) as c:
            assert hits(c, MEETING) == 0
            teach(c, MEETING, app)
            run = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            print(json.dumps({k: run[k] for k in ("status", "error", "attempts")}, default=str, indent=1))
            assert run["status"] == "succeeded", (run["error"], run["gate"])
            assert c.get("/v1/adapters").json()["production"] == run["adapter"]
            gate = run["gate"]
            assert gate["metrics"]["reference_ppl_rise"] <= app.ctx.settings.gate_max_ppl_rise
            assert run["attempts"][-1]["train"]["distill_anchors"] > 0
            assert hits(c, MEETING) >= 9, "held-out phrasings answered with the fact"
    finally:
        app.stop()


@pytest.mark.slow
@pytest.mark.xfail(reason="issue 11 open: measured 2026-11-29 16:40 (about 3 min idle): all four cycles promoted on "
                          "their first attempt; the first lesson now holds (100% after every cycle) but later ones "
                          "do not (after cycle 4: meeting 100%, wifi 30%, parking 0%, helpdesk 60%; variants in "
                          "bench/RESULTS.md). The demo model's own ceiling is below the target: all four lessons "
                          "trained together in one run reach 100/60/40/20% (2026-12-02, with or without DPO), so "
                          "the limit is its paraphrase generalization, not the loop forgetting. Not run in CI "
                          "until it can pass", run=False)
def test_four_lessons_in_four_cycles_are_all_kept(tmp_path, demo_model_dir):
    from bench.continual import run_cycles, table
    from tests.retrain.lessons import LESSONS

    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    rows = run_cycles(data_dir, LESSONS)
    print(table(rows, LESSONS))
    assert [r["status"] for r in rows] == ["succeeded"] * 4, [(r["status"], r["error"]) for r in rows]
    assert all(h >= 0.8 for h in rows[-1]["hits"].values()), rows[-1]["hits"]
    assert rows[-1]["ppl_rise_vs_base"] <= 0.15
