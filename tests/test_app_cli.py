"""The entry point as a user meets it: --help, the offline-hub message, refusing an open bind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
