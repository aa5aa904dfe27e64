"""An acknowledged write survives `kill -9` of the app: the real process, the real DuckDB file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.web.conftest import free_port, seed_data_dir

ROOT = Path(__file__).resolve().parents[2]


def start_process(data_dir: Path, port: int) -> subprocess.Popen:
    log = (data_dir.parent / f"app-{port}.log").open("w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--demo", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TUNELOOP_TEMPERATURE": "0"},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"app did not start: {Path(log.name).read_text()[-2000:]}")


def test_acknowledged_ratings_survive_kill_9(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    port = free_port()
    proc = start_process(data_dir, port)
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
    proc = start_process(data_dir, free_port())
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
