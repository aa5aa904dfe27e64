"""Adapter registry and production pointer; training runs, metrics and cutoffs; snapshots; embedding cache."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from feedback.errors import ReservedName, UnknownRun
from feedback.models import AdapterRecord


def test_registry_and_set_production_events(store):
    assert store.production() == "base" and store.next_adapter_version() == "v1"
    store.register_adapter(AdapterRecord(name="v1", path="/a/v1", snapshot_id="s1", run_id="r1", metrics={"loss": 1.5}))
    store.register_adapter(AdapterRecord(name="v2", path="/a/v2", parent="v1"))
    store.register_adapter(AdapterRecord(name="custom", path="/a/custom"))
    assert store.next_adapter_version() == "v3"
    v1 = store.get_adapter("v1")
    assert (v1.metrics, v1.status, v1.snapshot_id, v1.created_at.tzinfo) == ({"loss": 1.5}, "candidate", "s1", UTC)
    assert store.get_adapter("nope") is None

    store.set_production("v1", "admin", "first")
    store.set_production("v2", "canary", "better")
    assert store.production() == "v2"
    statuses = {r.name: r.status for r in store.list_adapter_records()}
    assert statuses == {"v1": "retired", "v2": "production", "custom": "candidate"}
    events = store.adapter_events()
    assert [(e["from"], e["to"], e["actor"], e["reason"]) for e in events] == [
        ("v1", "v2", "canary", "better"), ("base", "v1", "admin", "first")]
    assert events[0]["at"] >= events[1]["at"] and events[0]["action"] == "promote"
    store.set_production("base", "admin", "rollback to base", action="rollback")
    assert store.production() == "base" and store.get_adapter("v2").status == "retired"
    assert store.adapter_events(limit=1)[0]["action"] == "rollback"
    store.set_adapter_status("custom", "archived")
    assert store.get_adapter("custom").status == "archived"


# A hostile-input sweep promoted the alias itself: the store kept production -> production, and the next
# start-up served base. The store refuses every write that names an alias (or base where a version belongs).
def test_registry_refuses_reserved_names(store):
    store.register_adapter(AdapterRecord(name="v1", path="/a/v1"))
    store.set_production("v1", "admin", "first")
    refused = [
        lambda: store.set_production("production", "admin", "alias to alias"),
        lambda: store.register_adapter(AdapterRecord(name="production", path="/a/p")),
        lambda: store.register_adapter(AdapterRecord(name="base", path="/a/b")),
        lambda: store.set_adapter_public("production", True, "admin"),
        lambda: store.set_adapter_public("base", False, "admin"),
        lambda: store.start_experiment("v1", "base", 10.0, actor="admin"),
        lambda: store.start_experiment("production", "v1", 10.0, actor="admin"),
    ]
    for write in refused:
        with pytest.raises(ReservedName, match="reserved name"):
            write()
    assert store.production() == "v1" and store.get_adapter("v1").status == "production"
    assert [r.name for r in store.list_adapter_records()] == ["v1"]
    assert store.public_adapters() == set() and store.list_experiments() == []
    assert len(store.adapter_events()) == 1
    store.set_production("base", "admin", "base is a real target")
    assert store.production() == "base"


def test_runs_metrics_cutoff_and_stale_runs(store):
    assert store.last_cutoff() is None
    cutoff = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    r1 = store.create_run("schedule", "scheduler", {"lr": 2e-4})
    assert store.get_run(r1)["status"] == "queued" and store.get_run(r1)["settings"] == {"lr": 2e-4}
    store.update_run(r1, status="running", stage="train", step=3, total_steps=10, loss=1.25, started_at=cutoff)
    store.add_run_metric(r1, 1, 2.0, None)
    store.add_run_metric(r1, 2, 1.5, 1.7)
    assert store.run_metrics(r1) == [{"step": 1, "loss": 2.0, "eval_loss": None},
                                     {"step": 2, "loss": 1.5, "eval_loss": 1.7}]
    assert store.last_cutoff() is None  # still running
    store.update_run(r1, status="rejected", gate={"passed": False, "why": "loss"}, cutoff=cutoff,
                     finished_at=cutoff + timedelta(hours=1))
    run = store.get_run(r1)
    assert (run["gate"], run["cutoff"], run["step"], run["started_at"]) == ({"passed": False, "why": "loss"}, cutoff, 3,
                                                                            cutoff)
    assert store.last_cutoff() is None  # a rejected run does not move the cutoff: its rows are tried again
    r1b = store.create_run("manual", "admin", {})
    store.update_run(r1b, status="succeeded", cutoff=cutoff)
    assert store.last_cutoff() == cutoff  # a published run does

    r2 = store.create_run("manual", "admin", {})
    store.update_run(r2, status="failed", cutoff=cutoff + timedelta(days=1))
    assert store.last_cutoff() == cutoff  # failed runs do not move the cutoff
    r3 = store.create_run("manual", "admin", {})
    store.update_run(r3, status="running")
    assert store.mark_stale_runs_failed("app restarted") == 1
    assert (store.get_run(r3)["status"], store.get_run(r3)["error"]) == ("failed", "app restarted")
    assert [r["id"] for r in store.list_runs()] == [r3, r2, r1b, r1] and len(store.list_runs(limit=1)) == 1
    assert store.get_run("nope") is None
    with pytest.raises(UnknownRun):
        store.update_run("nope", status="running")
    with pytest.raises(TypeError):
        store.update_run(r1, colour="red")
    with pytest.raises(ValueError):
        store.update_run(r1, status="exploded")


def test_snapshots(store):
    cutoff = datetime(2025, 5, 1, tzinfo=UTC)
    store.record_snapshot("s1", "/d/s1", cutoff, {"sft": 10, "kto": 2}, "abc123")
    snap = store.get_snapshot("s1")
    assert (snap["path"], snap["cutoff"], snap["counts"], snap["content_hash"]) == ("/d/s1", cutoff,
                                                                                    {"sft": 10, "kto": 2}, "abc123")
    store.record_snapshot("s2", "/d/s2", None, {}, "def", created_at=datetime.now(UTC) + timedelta(seconds=1))
    assert [s["id"] for s in store.list_snapshots()] == ["s2", "s1"]
    assert store.get_snapshot("nope") is None


def test_embedding_cache_100k_rows(store):
    rng = random.Random(0)
    dim = 16  # bench-free size: the test checks correctness at 100k rows; speed is the store's numpy/arrow path
    items = {f"key{i}": [rng.random() for _ in range(dim)] for i in range(100_000)}
    store.put_embeddings("minilm", items)
    store.put_embeddings("minilm", {"key0": [9.0] * dim, "new": [1.0] * dim})  # existing keys keep their vector
    got = store.get_embeddings("minilm", [*items, "new", "missing"])
    assert len(got) == 100_001 and "missing" not in got
    assert got["key0"] == pytest.approx(items["key0"], rel=1e-6) and got["new"] == [1.0] * dim
    assert got["key99999"] == pytest.approx(items["key99999"], rel=1e-6)
    assert store.get_embeddings("other-model", ["key0"]) == {} and store.get_embeddings("minilm", []) == {}
    store.put_embeddings("other-model", {"k": [1.0, 2.0], "k2": [1.0, 2.0, 3.0]})  # ragged lengths still work
    assert store.get_embeddings("other-model", ["k", "k2"]) == {"k": [1.0, 2.0], "k2": [1.0, 2.0, 3.0]}
