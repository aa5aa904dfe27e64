"""The canary's ramp in the store: steps recorded with the share the traffic split reads, thumbs per step."""

from __future__ import annotations

import duckdb
from feedback_helpers import make_turn, user

from feedback import schema
from feedback.models import Rating
from feedback.store import FeedbackStore


def _judge(store, exp_id: str, arm: str, message_id: str, rating: str) -> None:
    store.record_turn(make_turn(message_id, [user("q")], "a", adapter="v1" if arm == "candidate" else "base",
                                message_id=message_id, experiment_id=exp_id, arm=arm))
    store.rate(Rating(message_id=message_id, user="u", rating=rating))


def test_ramp_steps_and_counts_per_step(store):
    exp = store.start_experiment("base", "v1", 10.0, actor="admin")
    [start] = store.experiment_steps(exp.id)
    assert (start["step"], start["percent"], start["actor"], start["at"]) == (0, 10.0, "admin", exp.started_at)
    _judge(store, exp.id, "control", "m0", "up")
    _judge(store, exp.id, "candidate", "m1", "down")
    assert store.ramp_experiment(exp.id, 25.0, "canary", "no harm", {"e_harm": 0.5}) == 1
    assert store.active_experiment().percent == 25.0  # what the traffic split reads
    _judge(store, exp.id, "candidate", "m2", "up")
    _judge(store, exp.id, "candidate", "m3", "up")
    steps = store.experiment_step_counts(exp.id)
    assert [(s["step"], s["percent"], s["control"], s["candidate"]) for s in steps] == [
        (0, 10.0, {"up": 1, "down": 0}, {"up": 0, "down": 1}),
        (1, 25.0, {"up": 0, "down": 0}, {"up": 2, "down": 0})]
    assert store.experiment_steps(exp.id)[1]["numbers"] == {"e_harm": 0.5}
    timeline = store.experiment_timeline(exp.id)
    assert sum(r["up"] + r["down"] for r in timeline) == 4 and all(r["hour"].tzinfo for r in timeline)
    store.end_experiment(exp.id, "promote", "better", "canary")
    assert store.ramp_experiment(exp.id, 50.0, "canary", "late") is None  # an ended experiment stays put
    assert len(store.experiment_steps(exp.id)) == 2


def test_an_experiment_from_before_the_ramp_gets_its_one_step(tmp_path):
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    schema.migrate(con, target=2)
    con.execute("""INSERT INTO experiments (id, control, candidate, percent, started_at, started_by, numbers)
                   VALUES ('e1', 'base', 'v1', 20, TIMESTAMP '2025-01-02 03:04:05', 'admin', '{}')""")
    con.close()
    with FeedbackStore(path) as s:
        [step] = s.experiment_steps("e1")
        assert (step["step"], step["percent"], step["actor"]) == (0, 20.0, "admin")
        assert s.ramp_experiment("e1", 50.0, "canary", "no harm") == 1
