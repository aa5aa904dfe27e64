"""The full cycle on the remote backend: a Tuneloop app (UI box) generates on a second Tuneloop app (the
engine, local demo mode) through vLLM's runtime LoRA routes, and both share one adapters directory.

Users teach through the app's API, the app retrains, and the promoted adapter is pushed to the engine
with /v1/load_lora_adapter; the taught answer then comes back from the engine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import uvicorn

from settings import DEMO_TRAINING
from tests.retrain.test_closed_loop import HELDOUT_QUESTIONS, TAUGHT, TRAIN_QUESTIONS, ask_all, teach
from tests.web.conftest import RunningApp, add_users, free_port, seed_data_dir, start_app


def start_remote_app(data_dir: Path, **overrides) -> RunningApp:
    """Like ``tests.web.conftest.start_app``, which always sets ``demo=True``: the app under test is not
    in demo mode (its base model is the engine's, named by path)."""
    from app import build_context
    from settings import load_settings
    from web.server import create_app

    settings = load_settings(None, data_dir=data_dir, port=free_port(), **overrides)
    ctx = build_context(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("app did not start")
        time.sleep(0.05)
    return RunningApp(f"http://127.0.0.1:{settings.port}", ctx, server, thread)


@pytest.mark.slow
def test_retrained_adapter_is_served_by_a_tuneloop_engine(tmp_path, demo_model_dir):
    engine_dir = tmp_path / "engine"
    seed_data_dir(engine_dir, demo_model_dir)
    engine = start_app(engine_dir, temperature=0.0)  # single-user: its API takes calls without a token
    app = None
    try:
        app_dir = tmp_path / "app"
        app_dir.mkdir()
        # The "shared mount": the app writes adapters where the engine reads them.
        (app_dir / "adapters").symlink_to(engine_dir / "adapters", target_is_directory=True)
        tokens = add_users(app_dir, ("admin", "ann", "ben", "cat"))
        app = start_remote_app(
            app_dir, backend="remote", remote_url=f"{engine.url}/v1", model=str(engine_dir / "demo-model"),
            remote_adapter_dir=str(engine_dir / "adapters"), temperature=0.0, promotion="auto",
            retrain_min_examples=1, heldout_fraction=0.2, **DEMO_TRAINING,
        )
        assert app.ctx.backend.health()["ok"]

        teach(app, tokens, TRAIN_QUESTIONS)
        with app.client(tokens["admin"], timeout=900) as c:
            run = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert run["status"] == "succeeded", (run["error"], run["gate"])
            adapter = run["adapter"]
            assert c.get("/v1/adapters").json()["production"] == adapter
            # Pushed through the engine's vLLM route, from the shared directory, under the same name.
            engine_adapters = {a.name: a for a in engine.ctx.backend.list_adapters()}
            assert adapter in engine_adapters
            assert Path(engine_adapters[adapter].path) == (engine_dir / "adapters" / adapter).resolve()

            served_before = {r["adapter"]: r["messages"] for r in engine.ctx.store.adapter_rating_stats()}
            answers = ask_all(c, HELDOUT_QUESTIONS)
            assert sum(a == TAUGHT for a in answers) >= 0.9 * len(HELDOUT_QUESTIONS), answers
            r = c.post("/v1/chat/completions", json={"model": "production", "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "Who are you?"}]})
            assert r.json()["adapter"] == adapter
        # The engine generated those answers with the new adapter (and stored them on its side).
        served_after = {r["adapter"]: r["messages"] for r in engine.ctx.store.adapter_rating_stats()}
        assert served_after.get(adapter, 0) - served_before.get(adapter, 0) >= len(HELDOUT_QUESTIONS)
        app_served = {r["adapter"]: r["messages"] for r in app.ctx.store.adapter_rating_stats()}
        assert app_served.get(adapter, 0) >= len(HELDOUT_QUESTIONS)
    finally:
        if app is not None:
            app.stop()
        engine.stop()
