"""What production traffic is served while adapters change under a running experiment, as an admin API
sweep found it: archiving or unloading an arm cut users' chat off (404 naming the admin-only adapter); a
promotion or rollback during an experiment never reached the users its stale control arm served; archived
adapters came back after a restart, a public one usable by everyone again; and any user's /v1/adapters
listed admin-only adapters with their runs and gate numbers."""

from __future__ import annotations

import pytest

from tests.web.conftest import add_users, seed_data_dir, start_app

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def team(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "alice"))
    apps = []

    def start():
        app = start_app(data_dir, temperature=0.0, max_new_tokens=2)
        app.admin, app.alice = app.client(tokens["admin"]), app.client(tokens["alice"])
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.admin.close()
        app.alice.close()
        app.stop()


def served_by(app, model: str = "production") -> str:
    """The adapter that answered alice's chat naming ``model``."""
    r = app.alice.post("/v1/chat/completions", json={"messages": HI, "model": model, "max_tokens": 2})
    assert r.status_code == 200, r.text
    return app.ctx.store.get_message(r.json()["id"]).adapter


def test_an_experiment_arm_cannot_be_archived_or_unloaded(team):
    app = team()
    for loose in (True, "50"):  # read as 1% and 50% before
        assert app.admin.post("/v1/admin/experiments", json={"candidate": "demo-a", "percent": loose}).status_code == 422
    assert app.admin.post("/v1/admin/experiments", json={"candidate": "demo-a", "percent": 100}).status_code == 200
    assert served_by(app) == "demo-a"
    for url, body in (("/v1/admin/adapters/demo-a/archive", None), ("/v1/unload_lora_adapter", {"lora_name": "demo-a"})):
        r = app.admin.post(url, json=body)
        assert r.status_code == 409 and "running experiment" in r.json()["error"]["message"], r.text
    assert served_by(app) == "demo-a"  # production traffic still served
    assert app.admin.post("/v1/admin/experiments/stop", json={}).status_code == 200
    assert app.admin.post("/v1/admin/adapters/demo-a/archive").status_code == 200


@pytest.mark.parametrize("switch", ["promote", "rollback"])
def test_a_switch_during_an_experiment_reaches_every_user(team, switch):
    app = team()
    admin = app.admin
    assert admin.post("/v1/admin/adapters/demo-b/promote", json={}).status_code == 200
    # at 0% every user is in the control arm: the production of when the experiment started
    assert admin.post("/v1/admin/experiments", json={"candidate": "demo-a", "percent": 0}).status_code == 200
    assert served_by(app) == "demo-b"
    if switch == "promote":
        assert admin.post("/v1/admin/adapters/base/promote", json={}).status_code == 200
    else:
        assert admin.post("/v1/admin/adapters/rollback", json={"to": "base"}).status_code == 200
    assert served_by(app) == "base"
    [ended, *_] = app.ctx.store.list_experiments()
    assert ended.outcome == "stopped" and "production switched to base" in ended.reason
    assert app.ctx.store.active_experiment() is None


def test_archived_adapters_stay_archived_across_a_restart(team):
    app = team()
    assert app.admin.post("/v1/admin/adapters/demo-a/public", json={"public": True}).status_code == 200
    assert served_by(app, "demo-a") == "demo-a"
    assert app.admin.post("/v1/admin/adapters/demo-a/archive").status_code == 200
    assert app.ctx.store.public_adapters() == set()
    app.admin.close(), app.alice.close(), app.stop()
    app = team()
    assert "demo-a" not in {a.name for a in app.ctx.backend.list_adapters()}
    r = app.alice.post("/v1/chat/completions", json={"messages": HI, "model": "demo-a", "max_tokens": 2})
    assert r.status_code == 404, r.text
    assert "demo-a" not in {m["id"] for m in app.admin.get("/v1/models").json()["data"]}
    # promoting it again brings it back
    assert app.admin.post("/v1/admin/adapters/demo-a/promote", json={}).status_code == 200
    assert served_by(app) == "demo-a"


def test_users_see_only_the_adapters_they_may_use(team):
    app = team()
    assert app.admin.post("/v1/admin/adapters/demo-a/promote", json={}).status_code == 200
    everything = app.admin.get("/v1/adapters").json()
    assert {"demo-a", "demo-b"} <= {row["name"] for row in everything["adapters"]}
    board = app.alice.get("/v1/adapters").json()
    assert board["production"] == "demo-a"
    assert {row["name"] for row in board["adapters"]} <= {"demo-a", "base"}
    assert "demo-b" not in str(board)
    assert all("run_id" not in row and "gate_metrics" not in row for row in board["adapters"])
    assert app.admin.post("/v1/admin/adapters/demo-b/public", json={"public": True}).status_code == 200
    assert "demo-b" in {row["name"] for row in app.alice.get("/v1/adapters").json()["adapters"]}


def test_health_details_are_for_admins_and_say_what_production_serves(team):
    import shutil

    import httpx

    app = team()
    adapters = app.ctx.settings.adapters_dir
    shutil.copytree(adapters / "demo-a", adapters / "v7")  # the demo restores its own adapters at start-up
    assert app.admin.post("/v1/load_lora_adapter", json={"lora_name": "v7", "lora_path": str(adapters / "v7")}).status_code == 200
    assert app.admin.post("/v1/admin/adapters/v7/promote", json={}).status_code == 200
    anon = httpx.get(f"{app.url}/healthz", timeout=30)
    assert anon.status_code == 200 and anon.json() == {"ok": True, "backend": "local"}  # no paths, no adapter names
    assert app.alice.get("/v1/admin/health").status_code == 403
    full = app.admin.get("/v1/admin/health").json()
    assert full["base_model"] and "v7" in full["adapters"]
    assert full["production"] == {"recorded": "v7", "serving": "v7", "in_step": True}
    app.admin.close(), app.alice.close(), app.stop()
    # production's adapter is gone at the next start: base is served, and an admin can see that it is
    shutil.rmtree(adapters / "v7")
    app = team()
    assert served_by(app) == "base"
    assert app.admin.get("/v1/admin/health").json()["production"] == {
        "recorded": "v7", "serving": "base", "in_step": False}
