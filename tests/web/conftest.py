"""A real Tuneloop app (demo model) served by uvicorn on a loopback port, in this process."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_data_dir(data_dir: Path, demo) -> None:
    """Copy the session's demo model into a fresh data dir, so each app skips the build."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(demo.model, data_dir / "demo-model")
    shutil.copytree(demo.adapters, data_dir / "adapters")


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

    settings = load_settings(None, demo=True, data_dir=data_dir, port=free_port(), **overrides)
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
