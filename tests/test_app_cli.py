"""The entry point as a user meets it: --help, the offline-hub message, refusing an open bind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_app(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_help_explains_the_flags():
    out = run_app("--help").stdout
    for flag in ("--demo", "--model", "--config", "--data-dir", "--host", "--port"):
        assert flag in out


def test_unreachable_hub_fails_fast_with_a_pointer_to_model_path_and_demo(tmp_path):
    r = run_app("--model", "tuneloop-test/does-not-exist", "--data-dir", str(tmp_path / "d"),
                env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0
    assert "--model" in r.stderr and "--demo" in r.stderr
    assert "Traceback" not in r.stderr


def test_refuses_to_bind_beyond_loopback_without_users(tmp_path):
    r = run_app("--demo", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"))
    assert r.returncode != 0
    assert "users add" in r.stderr and "Traceback" not in r.stderr


def test_bad_config_file_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('port = "not a number"\n')
    r = run_app("--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "port" in r.stderr and "Traceback" not in r.stderr


def test_settings_precedence(tmp_path, monkeypatch):
    from settings import load_settings

    cfg = tmp_path / "t.toml"
    cfg.write_text('port = 1111\nhost = "127.0.0.2"\nmax_new_tokens = 64\n')
    monkeypatch.setenv("TUNELOOP_PORT", "2222")
    s = load_settings(cfg, max_new_tokens=None)
    assert (s.port, s.host, s.max_new_tokens) == (2222, "127.0.0.2", 64)  # env beats file
    assert load_settings(cfg, port=3333).port == 3333  # flags beat env


def test_global_flags_work_before_or_after_the_subcommand(tmp_path):
    from app import parse_args

    for argv in (["--data-dir", "D", "export", "--out", "x"], ["export", "--out", "x", "--data-dir", "D"]):
        args = parse_args(argv)
        assert (args.command, args.data_dir, args.out) == ("export", "D", "x")
    assert parse_args(["--port", "9", "serve", "--demo"]).port == 9  # a flag before is not reset after
    r = run_app("users", "list", "--data-dir", str(tmp_path / "d"))
    assert "unrecognized arguments" not in r.stderr and r.returncode == 0, r.stderr


# --- the CLI's mistakes: one sentence on stderr, exit 2, nothing written ---------------------------------
def cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, input=stdin)


def refused(r: subprocess.CompletedProcess, words: str) -> bool:
    """Exit 2 and one line on stderr (after any log lines) that says ``words``, and no traceback."""
    return (r.returncode == 2 and words in r.stderr.strip().splitlines()[-1]
            and r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data dir with a database (one rated turn) and an admin; no app running."""
    from feedback.models import Rating, TurnRecord
    from feedback.store import FeedbackStore
    from web.auth import UserDirectory

    d = tmp_path / "data"
    with FeedbackStore(d / "tuneloop.duckdb") as store:
        store.record_turn(TurnRecord(
            conversation_id="c1", user="admin", request_messages=[{"role": "user", "content": "Who are you?"}],
            assistant_message_id="m1", answer="noise", adapter="base", base_model="demo", sampling={},
            latency_ms=1, first_token_ms=1, prompt_tokens=3, completion_tokens=1))
        store.rate(Rating(message_id="m1", user="admin", rating="up"))
    UserDirectory(d / "users.toml").add_user("admin", "admin-password", "admin")
    return d


def test_export_never_writes_into_the_data_dir_even_with_force(data_dir, tmp_path):
    db, users = data_dir / "tuneloop.duckdb", data_dir / "users.toml"
    before = {p: p.read_bytes() for p in (db, users)}
    names = sorted(p.name for p in data_dir.iterdir())
    link = tmp_path / "innocent.jsonl"
    link.symlink_to(db)
    (tmp_path / "dirlink").symlink_to(data_dir)
    for out, force in ((db, []), (db, ["--force"]), (users, []), (data_dir / "new.jsonl", []),
                       (data_dir / "sub" / ".." / "x.jsonl", []), (link, ["--force"]),
                       (tmp_path / "dirlink" / "tuneloop.duckdb", ["--force"]), (data_dir, [])):
        r = cli(data_dir, "export", "--out", str(out), *force)
        assert refused(r, "inside the data dir"), (out, r.stderr)
    assert {p: p.read_bytes() for p in (db, users)} == before
    assert sorted(p.name for p in data_dir.iterdir()) == names
    assert cli(data_dir, "data", "list", "--state", "all").returncode == 0  # the database still opens


def test_export_refuses_an_existing_file_unless_forced(data_dir, tmp_path):
    out = tmp_path / "chats.jsonl"
    out.write_text("keep\n")
    assert refused(cli(data_dir, "export", "--out", str(out)), "exists: pass --force")
    assert out.read_text() == "keep\n"
    r = cli(data_dir, "export", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert "Who are you?" in out.read_text()


def test_export_mistakes_are_one_sentence(data_dir, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [(["--out", ""], "--out needs a file name"),
             (["--out", str(tmp_path / "adir")], "is a folder"),
             (["--out", str(tmp_path / "afile" / "x.jsonl")], "cannot write --out"),
             (["--out", str(tmp_path / "y.jsonl"), "--since", "2024-13-01"], "is not a date"),
             (["--out", str(tmp_path / "y.jsonl"), "--since", "yesterday"], "is not a date")]
    for args, words in cases:
        assert refused(cli(data_dir, "export", *args), words), (args, cli(data_dir, "export", *args).stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile", "data"]  # nothing written


def test_users_add_keeps_the_role_of_an_existing_user_unless_given(data_dir):
    from web.auth import UserDirectory

    r = cli(data_dir, "users", "add", "admin", "--password", "a-new-password")  # the login page's reset
    assert r.returncode == 0 and "(admin)" in r.stdout, r.stderr
    users = UserDirectory(data_dir / "users.toml")
    assert users.principal("admin").role == "admin" and users.check_password("admin", "a-new-password")
    assert cli(data_dir, "users", "add", "carol", "--password", "carol-password").returncode == 0
    assert users.principal("carol").role == "user"  # a new user without --role is a user
    assert cli(data_dir, "users", "add", "admin", "--role", "user", "--password", "a-new-password").returncode == 0
    assert users.principal("admin").role == "user"  # --role given: it is what counts


def test_users_add_mistakes_are_one_sentence(data_dir):
    before = (data_dir / "users.toml").read_bytes()
    # An empty --password was taken for none and fell to a prompt (EOFError without a terminal).
    assert refused(cli(data_dir, "users", "add", "bob", "--password", ""), "at least 8 characters")
    assert refused(cli(data_dir, "users", "add", "bob"), "no password given")  # stdin empty, no terminal
    assert refused(cli(data_dir, "users", "add", "../evil", "--password", "long-enough-1"), "invalid user name")
    assert refused(cli(data_dir, "users", "token", "nobody"), "unknown user")
    assert (data_dir / "users.toml").read_bytes() == before


def test_data_list_limit_out_of_range_is_one_sentence(data_dir):
    for limit in ("-1", "0", "100000000000"):
        assert refused(cli(data_dir, "data", "list", "--limit", limit), "--limit must be between 1 and")


def test_a_process_holding_the_database_is_named(data_dir):
    from feedback.store import FeedbackStore

    # The app runs but its running-app.json is gone: the CLI opens the file and meets DuckDB's lock.
    with FeedbackStore(data_dir / "tuneloop.duckdb"):
        for args in (["data", "list"], ["adapters", "list"], ["export", "--out", str(data_dir.parent / "f.jsonl")]):
            r = cli(data_dir, *args)
            assert refused(r, f"is in use by another process (PID {os.getpid()})"), (args, r.stderr)
    assert not (data_dir.parent / "f.jsonl").exists()


def test_a_stale_running_app_file_is_named(data_dir):
    import json
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A live pid (this test's) that is not the app, at an address where nothing answers.
    (data_dir / "running-app.json").write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}",
                                                           "token": "x"}))
    for args in (["adapters", "list"], ["data", "trust", "admin"], ["export", "--out", str(data_dir.parent / "f.jsonl")]):
        r = cli(data_dir, *args)
        assert refused(r, "running-app.json") and "does not answer" in r.stderr, (args, r.stderr)
    assert not (data_dir.parent / "f.jsonl").exists()
