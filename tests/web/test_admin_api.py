"""Promotion, rollback and archiving through the admin API; every switch is logged with who and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
