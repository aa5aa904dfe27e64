"""`kill -9` of the app while 32 users chat, rate and vote and a retrain is training: nothing acknowledged is lost.

The app runs as its own process on the real DuckDB file; the users run in another process (bench/load.py's
loop). Mid-load the app gets SIGKILL: no shutdown hook, no checkpoint, no journal flush. Then the orphaned
training child must stop by itself, the app must start again on the same data dir, the interrupted run must
read as failed, and every message, rating and vote a user saw acknowledged must be in DuckDB.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import httpx
import pytest

from bench.load import add_users, lost_writes, run_users, teach
from tests.web.conftest import (
    free_port,
    process_alive,
    seed_data_dir,
    start_app_process,
    training_child_pid,
    wait_for,
)

pytestmark = pytest.mark.slow
USERS = 32
LOAD_BEFORE_KILL_S = 10


def test_kill_9_under_load_loses_no_acknowledged_write(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    admin_token, tokens = add_users(data_dir, USERS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = start_app_process(data_dir, port, TUNELOOP_TEMPERATURE="0.7", TUNELOOP_MAX_BATCH_SIZE="32",
                            TUNELOOP_RETRAIN_MIN_EXAMPLES="1")
    try:
        teach(url, admin_token, 8)
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            # The users would go on for two minutes; the kill ends them sooner (each notes the lost connection).
            load = pool.submit(run_users, url, tokens, 120)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60) as c:
                run_id = c.post("/v1/admin/retrain", json={"promote": "auto"}).json()["run"]["id"]
            started = time.time()
            child = wait_for(lambda: training_child_pid(parent=app.pid), 180, "the training child")
            time.sleep(max(0.0, LOAD_BEFORE_KILL_S - (time.time() - started)))
            app.send_signal(signal.SIGKILL)
            app.wait(10)
            results = load.result(timeout=180)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(10)
    assert app.returncode == -signal.SIGKILL

    # The load was real and the kill cut it: users saw acknowledgements, then lost their connections.
    assert [e for r in results for e in r["errors"]] == []  # no 5xx before the kill
    assert sum(bool(r["disconnected"]) for r in results) == USERS
    assert sum(len(r["messages"]) for r in results) >= USERS

    # The orphaned training child notices its parent is gone and stops (it would hold the GPU otherwise).
    wait_for(lambda: not process_alive(child), 15, f"training child {child} to exit after its app was killed")

    port = free_port()
    app = start_app_process(data_dir, port)  # the database opens and the turn journal is replayed
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {admin_token}"}) as c:
            assert c.get("/healthz").status_code == 200
            run = c.get(f"/v1/admin/runs/{run_id}").json()
            assert run["status"] == "failed" and "stopped" in run["error"], run
            assert c.get("/v1/adapters").json()["production"] == "base"
            assert not [p for p in (data_dir / "adapters").iterdir() if p.name.startswith(("v", ".tmp"))]
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(60)

    from feedback.store import FeedbackStore

    with FeedbackStore(data_dir / "tuneloop.duckdb") as store:
        lost = lost_writes(store, results)
    print(f"\nacknowledged before the kill: {lost['messages']} messages, {lost['ratings']} ratings, "
          f"{lost['votes']} votes")
    assert lost["missing_messages"] == [] and lost["missing_ratings"] == 0 and lost["missing_votes"] == [], lost
    assert lost["ratings"] > 0 and lost["votes"] > 0
