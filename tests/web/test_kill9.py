"""An acknowledged write survives `kill -9` of the app: the real process, the real DuckDB file."""

from __future__ import annotations

import signal

import httpx

from tests.web.conftest import free_port, seed_data_dir, start_app_process


def test_acknowledged_ratings_survive_kill_9(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    port = free_port()
    proc = start_app_process(data_dir, port)
    acked: dict[str, str] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            for i in range(10):
                r = c.post("/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 3})
                message_id = r.json()["id"]
                rating = "up" if i % 3 else "down"
                assert c.post("/v1/feedback", json={"message_id": message_id, "rating": rating}).status_code == 200
                acked[message_id] = rating
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown hooks, no checkpoint
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    from feedback.store import FeedbackStore

    store = FeedbackStore(data_dir / "tuneloop.duckdb")  # opens (and replays the WAL) after the crash
    try:
        found = {e.message_id: e.rating for e in store.rated_examples()}
    finally:
        store.close()
    assert found == acked

    # ... and the app starts again on the same data dir.
    proc = start_app_process(data_dir, free_port())
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
