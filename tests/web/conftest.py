"""A real Tuneloop app (demo model) on a loopback port: served by uvicorn in this process, or as its own process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_data_dir(data_dir: Path, demo) -> None:
    """Copy the session's demo model into a fresh data dir, so each app skips the build."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(demo.model, data_dir / "demo-model")
    shutil.copytree(demo.adapters, data_dir / "adapters", dirs_exist_ok=True)  # may be its own mount


def add_users(data_dir: Path, names: tuple[str, ...], admins: tuple[str, ...] = ("admin",)) -> dict[str, str]:
    """Users in ``data_dir``'s users file (those named in ``admins`` are admins), each with an API token."""
    from web.auth import UserDirectory

    users = UserDirectory(data_dir / "users.toml")
    tokens = {}
    for name in names:
        users.add_user(name, f"{name}-password", "admin" if name in admins else "user")
        tokens[name] = users.create_token(name)
    return tokens


@dataclass
class RunningApp:
    url: str
    ctx: object
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, token: str | None = None, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.ctx.retrain.shutdown()
        self.ctx.backend.close()
        self.ctx.store.close()


def start_app(data_dir: Path, **overrides) -> RunningApp:
    from app import build_context
    from settings import load_settings
    from web.server import create_app

    overrides.setdefault("demo", True)  # or demo=False, model=PATH for another local model
    settings = load_settings(None, data_dir=data_dir, port=free_port(), **overrides)
    ctx = build_context(settings)
    app = create_app(ctx)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("app did not start")
        time.sleep(0.05)
    return RunningApp(url, ctx, server, thread)


@pytest.fixture(scope="module")
def running_app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("app") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir, temperature=0.0)
    yield app
    app.stop()


def start_app_process(data_dir: Path, port: int, **env: str) -> subprocess.Popen:
    """``python app.py --demo`` on ``data_dir`` as a process of its own (one a test may ``kill -9``)."""
    log = (data_dir.parent / f"app-{port}.log").open("w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--demo", "--data-dir", str(data_dir), "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TUNELOOP_TEMPERATURE": "0", **env},
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


def training_child_pid(parent: int | None = None) -> int | None:
    """A running training worker (``python -m retrain.train_worker``), of ``parent`` when given."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"retrain.train_worker" not in f.read():
                    continue
            state, ppid = _proc_stat(int(entry))[:2]
        except OSError:
            continue
        if state != "Z" and (parent is None or int(ppid) == parent):
            return int(entry)
    return None


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has stopped running)."""
    try:
        return _proc_stat(pid)[0] != "Z"
    except OSError:
        return False


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def raw_request(url: str, head: str, body_chunks=(), chunked: bool = False) -> tuple[int, bytes]:
    """Send a request by hand (an attacker's client) and return (status, body): reads the answer as soon
    as one comes, even while the body is still being sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head.encode())
        try:
            for chunk in body_chunks:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                s.settimeout(0.0)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break  # answered already
                except BlockingIOError:
                    pass
                finally:
                    s.settimeout(30)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]
