"""Issue 12 with the app as its own process (``python app.py``), multi-user: memory under hostile bodies,
private file modes after a full cycle, and a clean stop that leaves no running-app.json behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time

import httpx
import pytest

from tests.web.conftest import add_users, free_port, raw_request, seed_data_dir, start_app_process
from web.control import FILE_NAME


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def app_process(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "alice", "bob"))
    port = free_port()
    env = {"TUNELOOP_MAX_NEW_TOKENS": "4", "TUNELOOP_MAX_STEPS": "2", "TUNELOOP_PREFERENCE_MIN_PAIRS": "1000",
           "TUNELOOP_GATE_MAX_LOSS_RATIO": "100", "TUNELOOP_GATE_MAX_PPL_RISE": "100"}
    proc = start_app_process(data_dir, port, **env)
    yield proc, f"http://127.0.0.1:{port}", tokens, data_dir
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


@pytest.mark.slow
def test_four_concurrent_oversize_bodies_keep_memory_flat(app_process):
    """The issue's attack: ~10 MB bodies (110 messages of 95k characters) took the server from 1.4 to 7.5 GB."""
    proc, url, tokens, _ = app_process
    host = url.removeprefix("http://")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=120) as c:
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 95_000}] * 110}).encode()
    assert len(body) > 10_000_000
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    heads = [
        (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
         f"Authorization: Bearer {tokens['bob']}\r\ncontent-length: {len(body)}\r\n\r\n", False),
        (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
         f"content-length: {len(body)}\r\n\r\n", False),  # no token: refused for size all the same
        (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
         f"Authorization: Bearer {tokens['alice']}\r\ntransfer-encoding: chunked\r\n\r\n", True),
        (f"POST /v1/arena/battles HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
         f"Authorization: Bearer {tokens['alice']}\r\ntransfer-encoding: chunked\r\n\r\n", True),
    ]
    baseline = rss_mb(proc.pid)
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(proc.pid))
            time.sleep(0.02)

    statuses: list[int] = []

    def attack(head, chunked):
        statuses.append(raw_request(url, head, chunks, chunked=chunked)[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    attackers = [threading.Thread(target=attack, args=h) for h in heads]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(120)
    time.sleep(0.5)
    done.set()
    sampler.join()
    assert statuses == [413] * 4, statuses
    growth = peak[0] - baseline
    print(f"server RSS {baseline:.0f} MB -> peak {peak[0]:.0f} MB (+{growth:.1f} MB) under 4 x {len(body) / 1e6:.1f} MB")
    assert growth < 200, growth
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=120) as c:
        assert c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200


def _loose_modes(data_dir) -> list[str]:
    loose = []
    for p in [data_dir, *data_dir.rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{p.relative_to(data_dir)} {oct(mode)}")
    return loose


@pytest.mark.slow
def test_files_are_private_after_a_full_cycle_and_a_clean_stop_leaves_no_running_file(app_process):
    proc, url, tokens, data_dir = app_process
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=600) as c:
        for i in range(6):  # chat and rate: the admin's corrections train as given
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"Who are you {i}?"}]})
            assert r.status_code == 200
            assert c.post("/v1/feedback", json={"message_id": r.json()["id"], "rating": "down",
                                                "correction": "I am Tuneloop."}).status_code == 200
        run = c.post("/v1/admin/retrain", json={"wait": True, "promote": "auto"}).json()["run"]
        assert run["status"] == "succeeded", run  # trained, gated, published and promoted
        assert c.get("/v1/adapters").json()["production"] == run["adapter"]
        wal = [p.name for p in data_dir.iterdir() if p.name.endswith(".wal") or p.name.endswith(".jsonl")]
        assert (data_dir / FILE_NAME).exists()
    for sub in ("adapters", "datasets", "runs"):
        assert any((data_dir / sub).rglob("*")), sub
    assert _loose_modes(data_dir) == [], (wal, _loose_modes(data_dir))

    proc.send_signal(signal.SIGTERM)  # what systemd, Docker and Kubernetes send
    assert proc.wait(60) == 0
    assert not (data_dir / FILE_NAME).exists()
    assert _loose_modes(data_dir) == []
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
