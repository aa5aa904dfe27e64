"""Promotion, rollback and archiving through the admin API; every switch is logged with who and why, and none
may name an alias where an adapter belongs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tests.feedback.feedback_helpers import write_production_alias
from tests.web.conftest import seed_data_dir, start_app

ROOT = Path(__file__).resolve().parents[2]


def test_promote_rollback_archive(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir)
    try:
        with app.client() as c:
            r = c.post("/v1/admin/adapters/demo-a/promote", json={"reason": "looks better"})
            assert r.status_code == 200 and r.json()["production"] == "demo-a"
            assert app.ctx.backend.resolve("production") == "demo-a"
            assert c.post("/v1/admin/adapters/demo-b/promote", json={}).json()["production"] == "demo-b"
            r = c.post("/v1/admin/adapters/rollback", json={"reason": "regression"})
            assert r.json()["production"] == "demo-a"
            assert app.ctx.backend.resolve("production") == "demo-a"
            # production cannot be archived; another adapter can, and is unloaded.
            assert c.post("/v1/admin/adapters/demo-a/archive").status_code == 409
            assert c.post("/v1/admin/adapters/demo-b/archive").status_code == 200
            assert "demo-b" not in {m["id"] for m in c.get("/v1/models").json()["data"]}
            assert c.post("/v1/admin/adapters/nope/promote", json={}).status_code == 404
            events = c.get("/v1/admin/adapters/events").json()["events"]
        reasons = " | ".join(str(e.get("reason")) for e in events)
        assert "looks better" in reasons and "regression" in reasons
        assert all(e.get("actor") == "local" for e in events)
    finally:
        app.stop()

    # Without the app, the CLI rolls back in the store; the app restores the pointer when it starts.
    out = subprocess.run([sys.executable, "app.py", "--data-dir", str(data_dir), "adapters", "rollback",
                          "--to", "base", "--reason", "cli test"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "production -> base" in out.stdout
    app = start_app(data_dir)
    try:
        assert app.ctx.backend.resolve("production") == "base"
    finally:
        app.stop()


# A hostile-input sweep: promoting the alias answered 200 and stored production -> production; /v1/models
# then listed a phantom model, and after a restart production served base instead of demo-a. Every route that
# names an alias (or base) where an adapter version belongs now answers 409 (400 on vLLM's engine route), and an
# app started on a registry the old code left restores the adapter that was promoted.
def test_reserved_names_are_refused_and_an_alias_pointer_is_repaired(tmp_path, demo_model_dir, caplog):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir)
    try:
        with app.client() as c:
            assert c.post("/v1/admin/adapters/demo-a/promote", json={}).status_code == 200
            for url, body in [("/v1/admin/adapters/production/promote", {}),
                              ("/v1/admin/adapters/rollback", {"to": "production"}),
                              ("/v1/admin/adapters/production/public", {"public": True}),
                              ("/v1/admin/adapters/base/public", {"public": False}),
                              ("/v1/admin/experiments", {"candidate": "production"}),
                              ("/v1/admin/experiments", {"candidate": "base"}),
                              ("/v1/unload_lora_adapter", {"lora_name": "production"})]:
                r = c.post(url, json=body)
                assert r.status_code == 409 and r.json()["error"]["message"], (url, body, r.text)
            for name in ("production", "base"):
                r = c.post("/v1/load_lora_adapter",
                           json={"lora_name": name, "lora_path": str(app.ctx.settings.adapters_dir / "demo-b")})
                assert r.status_code == 400 and "reserved" in r.text, r.text
            assert c.get("/v1/adapters").json()["production"] == "demo-a"
            assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {"base", "production", "demo-a", "demo-b"}
            assert app.ctx.backend.resolve("production") == "demo-a"
            assert app.ctx.store.public_adapters() == set()
    finally:
        app.stop()

    out = subprocess.run([sys.executable, "app.py", "--data-dir", str(data_dir), "adapters", "promote", "production"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "'production' is an alias" in out.stderr, out.stderr

    write_production_alias(app.ctx.settings.db_path, previous="demo-a")
    with caplog.at_level(logging.ERROR, logger="retrain.promotion"):
        app = start_app(data_dir)
    try:
        assert "production pointed at 'production', an alias" in caplog.text
        assert app.ctx.backend.resolve("production") == "demo-a"
        with app.client() as c:
            assert c.get("/v1/adapters").json()["production"] == "demo-a"
            assert c.get("/v1/admin/adapters/events").json()["events"][0]["action"] == "repair"
    finally:
        app.stop()
