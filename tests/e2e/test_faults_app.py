"""Faults met by the running app: corrupted adapters in the adapters dir, a training process killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests.retrain.test_closed_loop import TRAIN_QUESTIONS, teach
from tests.web.conftest import add_users, seed_data_dir, start_app, training_child_pid

pytestmark = pytest.mark.slow
HI = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def plant_broken_adapters(adapters) -> None:
    truncated = adapters / "broken-truncated"
    shutil.copytree(adapters / "demo-a", truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    pickled = adapters / "broken-pickle"
    shutil.copytree(adapters / "demo-a", pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")


def test_corrupted_adapters_are_refused_and_never_served(tmp_path, demo_model_dir, caplog):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    plant_broken_adapters(data_dir / "adapters")
    app = start_app(data_dir)
    try:
        assert "broken-truncated" in caplog.text and "broken-pickle" in caplog.text  # named in the log
        with app.client() as c:
            ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
            assert "demo-a" in ids and not ids & {"broken-truncated", "broken-pickle"}
            for name in ("broken-truncated", "broken-pickle"):
                r = c.post(f"/v1/admin/adapters/{name}/promote", json={})
                assert 400 <= r.status_code < 500 and name in r.json()["error"]["message"], r.text
                assert c.post("/v1/chat/completions", json={**HI, "model": name}).status_code == 404
            assert c.get("/v1/adapters").json()["production"] == "base"
            assert c.post("/v1/chat/completions", json=HI).status_code == 200
    finally:
        app.stop()


def test_killing_the_training_process_leaves_serving_and_production_alone(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "ann", "ben", "cat"))
    app = start_app(data_dir, temperature=0.0, retrain_min_examples=1, heldout_fraction=0.2)
    try:
        teach(app, tokens, TRAIN_QUESTIONS[:8])
        with app.client(tokens["admin"]) as c:
            run_id = c.post("/v1/admin/retrain", json={}).json()["run"]["id"]
            deadline = time.time() + 120
            pid = None
            while pid is None and time.time() < deadline:
                pid = training_child_pid()
                time.sleep(0.2)
            assert pid, "the training child never reported its pid"
            os.kill(pid, signal.SIGKILL)
            for _ in range(5):  # serving carries on meanwhile
                assert c.post("/v1/chat/completions", json=HI).status_code == 200
            while app.ctx.retrain.current_run is not None and time.time() < deadline:
                time.sleep(0.5)
            run = c.get(f"/v1/admin/runs/{run_id}").json()
            assert run["status"] == "failed" and "SIGKILL" in run["error"], run
            assert c.get("/v1/adapters").json()["production"] == "base"
            assert not [p for p in (data_dir / "adapters").iterdir() if p.name.startswith("v")]
            again = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert again["status"] in ("succeeded", "rejected"), again
    finally:
        app.stop()
