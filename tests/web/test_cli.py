"""The CLI subcommands against a real data dir: retrain (handed to the running app, and alone), export,
users; as a user would type them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import ROOT, free_port, seed_data_dir, start_app_process


def cli(data_dir: Path, *args: str, demo: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    flags = ["--demo"] if demo else []
    return subprocess.run([sys.executable, "app.py", *flags, "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# `python app.py ...` with a file created at --out just after the command checked it was free: the race
# between another program and the export, made to happen every time.
EXPORT_RACE = """
import sys

import app
from web import commands

checked = commands.export_target


def then_created(out, data_dir, force=False):
    path = checked(out, data_dir, force)
    path.write_text("theirs")
    return path


commands.export_target = then_created
sys.exit(app.main(sys.argv[1:]))
"""


def export_raced(data_dir: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", EXPORT_RACE, "--data-dir", str(data_dir), "export", "--out", str(out),
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_race_lost_nothing(data_dir: Path, out: Path) -> None:
    """Without --force the file created after the check stays, with one line saying so; with it, replaced."""
    r = export_raced(data_dir, out)
    assert r.returncode == 2 and out.read_text() == "theirs", (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == (
        f"error: --out {out} was created while exporting and was left as it is: pass --force to replace it")
    assert os.listdir(out.parent) == [out.name]  # no temp file left beside it
    out.unlink()
    r = export_raced(data_dir, out, "--force")
    assert r.returncode == 0 and out.read_text() != "theirs", r.stderr
    assert os.listdir(out.parent) == [out.name]


def rate_some(url: str, n: int = 4) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(n):
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"Who are you {i}?"}],
                                                     "max_tokens": 6})
            c.post("/v1/feedback", json={"message_id": r.json()["id"], "rating": "down",
                                         "correction": "I am Tuneloop."})


@pytest.mark.slow
def test_retrain_is_handed_to_the_running_app_and_runs_alone_otherwise(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    port = free_port()
    proc = start_app_process(data_dir, port)
    try:
        rate_some(f"http://127.0.0.1:{port}")
        out = cli(data_dir, "retrain", "--json", "--promote", "manual")
        assert out.returncode == 0, out.stderr
        run = json.loads(out.stdout)
        assert run["status"] in ("succeeded", "rejected") and run["trigger"] == "manual"
        # The running app did the work: its own API knows the run.
        runs = httpx.get(f"http://127.0.0.1:{port}/v1/admin/runs", timeout=30).json()["runs"]
        assert run["id"] in {r["id"] for r in runs}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    # No app running: the same command opens the data dir itself.
    out = cli(data_dir, "retrain")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("run ")  # "run <id>: skipped|succeeded|rejected ..."


def test_export_and_users_commands(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    from feedback.models import Rating, TurnRecord
    from feedback.store import FeedbackStore

    with FeedbackStore(data_dir / "tuneloop.duckdb") as store:
        store.record_turn(TurnRecord(
            conversation_id="c1", user="local", request_messages=[{"role": "user", "content": "Who are you?"}],
            assistant_message_id="m1", answer="noise", adapter="base", base_model="demo", sampling={},
            latency_ms=1, first_token_ms=1, prompt_tokens=3, completion_tokens=1))
        store.rate(Rating(message_id="m1", user="local", rating="down", correction="I am Tuneloop."))

    out_file = tmp_path / "chats.jsonl"
    r = cli(data_dir, "export", "--out", str(out_file), "--format", "openai", "--rated-only", demo=False)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert rows == [{"messages": [{"role": "user", "content": "Who are you?"},
                                  {"role": "assistant", "content": "I am Tuneloop."}]}]

    r = cli(data_dir, "export", "--out", str(tmp_path / "x.parquet"), "--format", "parquet", demo=False)
    assert r.returncode == 0 and (tmp_path / "x.parquet").stat().st_size > 0

    r = cli(data_dir, "users", "add", "bob", "--role", "admin", "--password", "bob-password-1", demo=False)
    assert r.returncode == 0, r.stderr
    token = cli(data_dir, "users", "token", "bob", demo=False).stdout.strip()
    assert token.startswith("tl-")
    from web.auth import UserDirectory

    users = UserDirectory(data_dir / "users.toml")
    assert users.by_token(token).name == "bob" and users.check_password("bob", "bob-password-1")
    bad = cli(data_dir, "users", "add", "../evil", "--password", "long-enough-1", demo=False)
    assert bad.returncode != 0 and "invalid user name" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "raced").mkdir()
    assert_race_lost_nothing(data_dir, tmp_path / "raced" / "chats.jsonl")


def test_names_in_the_running_apps_urls_are_one_path_segment_and_export_spares_its_files(tmp_path, demo_model_dir):
    """A name holding "/", ".." or "?" reached other routes: `adapters promote 'x/../rollback?'` rolled
    production back, `'x/../../retrain?'` started a retrain, `data trust 'bob/../alice'` trusted alice."""
    from tests.web.conftest import add_users

    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "alice", "bob"))
    port = free_port()
    proc = start_app_process(data_dir, port)
    try:
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                         headers={"Authorization": f"Bearer {tokens['admin']}"})
        for name in ("demo-a", "demo-b"):
            assert c.post(f"/v1/admin/adapters/{name}/promote", json={}).status_code == 200
        events = c.get("/v1/admin/adapters/events").json()["events"]
        for name in ("x/../rollback?", "x/../../retrain?", "x/..%2F..%2Fretrain", ".."):
            r = cli(data_dir, "adapters", "promote", name, demo=False)
            assert r.returncode == 2 and "unknown adapter" in r.stderr.splitlines()[-1], (name, r.stdout, r.stderr)
        assert c.get("/v1/adapters").json()["production"] == "demo-b"
        assert c.get("/v1/admin/adapters/events").json()["events"] == events
        assert c.get("/v1/admin/runs").json()["runs"] == []

        r = cli(data_dir, "data", "trust", "bob/../alice", demo=False)
        assert r.returncode == 2 and "unknown user 'bob/../alice'" in r.stderr, r.stderr
        assert not any(u["user"] == "alice" and u["trusted"] for u in c.get("/v1/admin/data/trust").json()["users"])
        r = cli(data_dir, "data", "trust", "alice", demo=False)  # a plain name still works through the app
        assert r.returncode == 0, r.stderr
        assert any(u["user"] == "alice" and u["trusted"] for u in c.get("/v1/admin/data/trust").json()["users"])

        # export --out onto the running app's own files: refused, they stay as they were, the app still serves.
        before = {p: p.read_bytes() for p in (data_dir / "users.toml",)}
        for out in (data_dir / "tuneloop.duckdb", data_dir / "users.toml"):
            r = cli(data_dir, "export", "--out", str(out), "--force", demo=False)
            assert r.returncode == 2 and "inside the data dir" in r.stderr, r.stderr
        assert {p: p.read_bytes() for p in before} == before
        assert c.get("/v1/models").status_code == 200
        out = tmp_path / "chats.jsonl"
        assert cli(data_dir, "export", "--out", str(out), demo=False).returncode == 0
        r = cli(data_dir, "export", "--out", str(out), demo=False)
        assert r.returncode == 2 and "--force" in r.stderr, r.stderr
        (tmp_path / "raced").mkdir()
        assert_race_lost_nothing(data_dir, tmp_path / "raced" / "chats.jsonl")  # through the app's download
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
