"""Users, roles and tokens, enforced on the server for every route."""

from __future__ import annotations

import re

import pytest

from tests.web.conftest import seed_data_dir, start_app
from web.auth import AuthError, UserDirectory, hash_password, verify_password


def test_password_hashes_verify_and_never_store_the_password(tmp_path):
    h = hash_password("correct horse")
    assert verify_password("correct horse", h) and not verify_password("wrong horse", h)
    users = UserDirectory(tmp_path / "users.toml")
    users.add_user("alice", "correct horse", "admin")
    assert "correct horse" not in (tmp_path / "users.toml").read_text()
    assert users.check_password("alice", "correct horse") and not users.check_password("alice", "nope")
    with pytest.raises(AuthError):
        users.add_user("../evil", "long enough pw")
    with pytest.raises(AuthError):
        users.create_token("nobody")


@pytest.fixture(scope="module")
def multi_user_app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("mu") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    users = UserDirectory(data_dir / "users.toml")
    users.add_user("alice", "alice-password", "admin")
    users.add_user("bob", "bob-password", "user")
    tokens = {"alice": users.create_token("alice"), "bob": users.create_token("bob"),
              "carol": None}
    app = start_app(data_dir)
    yield app, tokens
    app.stop()


# vLLM's runtime LoRA routes keep vLLM's paths, outside /v1/admin, but are admin-only too.
ENGINE_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


def admin_routes(app) -> list[tuple[str, str]]:
    """Every admin route (under /v1/admin, plus the engine routes), read from the app itself, so a new
    route cannot slip through."""
    routes = []
    paths = app.server.config.app.openapi()["paths"]
    assert set(ENGINE_ROUTES) <= set(paths)
    for path, methods in paths.items():
        if path.startswith("/v1/admin") or path in ENGINE_ROUTES:
            for method in methods:
                routes.append((method.upper(), path.replace("{name}", "demo-a").replace("{run_id}", "x")))
    return routes


def test_every_admin_route_refuses_anonymous_and_user(multi_user_app):
    app, tokens = multi_user_app
    routes = admin_routes(app)
    assert len(routes) >= 10
    for method, path in routes:
        with app.client() as anon:
            assert anon.request(method, path, json={}).status_code == 401, path
        with app.client(tokens["bob"]) as bob:
            assert bob.request(method, path, json={}).status_code == 403, path
        with app.client("tl-made-up-token") as forged:
            assert forged.request(method, path, json={}).status_code == 401, path


# Bodies FastAPI cannot decode: it reads them before any dependency runs, so these once got 422 (the JSON
# decoder's words) or 400 before the auth check could answer.
BAD_BODIES = (b'{"messages": [', b'{"rating": "\xff"}')


def body_routes(app) -> list[tuple[str, str, bool]]:
    """(method, path, admin only) of every route that takes a JSON body, read from the app itself."""
    routes = []
    for path, methods in app.server.config.app.openapi()["paths"].items():
        for method, op in methods.items():
            if "requestBody" in op:
                concrete = re.sub(r"\{[^}]+\}", "x", path)
                routes.append((method.upper(), concrete, path.startswith("/v1/admin") or path in ENGINE_ROUTES))
    return routes


def test_a_body_is_judged_only_after_the_caller(multi_user_app):
    """Anonymous: 401 on every route with a body, whatever the body; a user on an admin route: 403; a caller
    allowed the route still learns what was wrong with the body."""
    app, tokens = multi_user_app
    routes = body_routes(app)
    assert {("POST", "/v1/chat/completions", False), ("POST", "/v1/feedback", False),
            ("POST", "/v1/admin/data/include", True)} <= set(routes)
    headers = {"content-type": "application/json"}
    for method, path, admin_only in routes:
        for body in BAD_BODIES:
            with app.client() as anon, app.client("tl-made-up-token") as forged:
                for caller in (anon, forged):
                    r = caller.request(method, path, content=body, headers=headers)
                    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (path, body)
            with app.client(tokens["bob"]) as bob:
                r = bob.request(method, path, content=body, headers=headers)
                assert r.status_code == (403 if admin_only else 422 if body == BAD_BODIES[0] else 400), (path, body)
            if admin_only:
                with app.client(tokens["alice"]) as alice:
                    r = alice.request(method, path, content=body, headers=headers)
                    assert r.status_code == (422 if body == BAD_BODIES[0] else 400), (path, body)
    with app.client(tokens["bob"]) as bob:
        r = bob.post("/v1/chat/completions", content=BAD_BODIES[0], headers=headers)
    assert "not valid JSON" in r.json()["error"]["message"]


def test_user_routes_need_a_token_and_record_the_user(multi_user_app):
    app, tokens = multi_user_app
    with app.client() as anon:
        assert anon.get("/v1/models").status_code == 401
        assert anon.get("/healthz").status_code == 200
    with app.client(tokens["bob"]) as bob:
        r = bob.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200
        message_id = r.json()["id"]
        assert bob.post("/v1/feedback", json={"message_id": message_id, "rating": "up"}).status_code == 200
    stored = app.ctx.store.get_message(message_id)
    assert stored.user == "bob"
    with app.client(tokens["alice"]) as alice:
        # alice's rating is hers: it cannot overwrite bob's, and both coexist.
        assert alice.post("/v1/feedback", json={"message_id": message_id, "rating": "down"}).status_code == 200
        assert alice.get("/v1/admin/runs").status_code == 200
    stats = app.ctx.store.stats()["totals"]
    assert stats["up"] >= 1 and stats["down"] >= 1


def test_the_model_list_shows_the_base_models_path_to_admins_only(multi_user_app):
    app, tokens = multi_user_app
    with app.client(tokens["bob"]) as bob, app.client(tokens["alice"]) as alice:
        assert {m["root"] for m in bob.get("/v1/models").json()["data"]} == {None}
        assert bob.get("/v1/models/base").json()["root"] is None
        assert {m["root"] for m in alice.get("/v1/models").json()["data"]} == {app.ctx.backend.base_model}


def test_a_user_cannot_choose_arena_adapters(multi_user_app):
    app, tokens = multi_user_app
    with app.client(tokens["bob"]) as bob:
        r = bob.post("/v1/arena/battles", json={"prompt": "hi", "adapters": ["demo-a", "demo-b"], "max_tokens": 2})
    assert r.status_code == 403


def test_team_stats_are_for_admins_and_fresh_after_a_rating(multi_user_app):
    """The team's totals count everyone's ratings: a user gets 403. An admin's are served from a short cache,
    which a new rating voids, so a rating shows at once."""
    app, tokens = multi_user_app
    with app.client(tokens["bob"]) as bob:
        r = bob.get("/v1/feedback/stats")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        answer = bob.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hey"}],
                                                         "max_tokens": 3}).json()["id"]
    with app.client(tokens["alice"]) as alice:
        before = alice.get("/v1/feedback/stats").json()["totals"]
        assert alice.get("/v1/feedback/stats").json()["totals"] == before  # from the cache
        with app.client(tokens["bob"]) as bob:
            assert bob.post("/v1/feedback", json={"message_id": answer, "rating": "up"}).status_code == 200
        assert alice.get("/v1/feedback/stats").json()["totals"]["up"] == before["up"] + 1


def test_export_is_sent_as_a_named_file(multi_user_app):
    app, tokens = multi_user_app
    with app.client(tokens["alice"]) as alice:
        with alice.stream("GET", "/v1/admin/export", params={"format": "openai", "rated_only": "true"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/jsonl")
            assert 'filename="tuneloop-export-rated.jsonl"' in r.headers["content-disposition"]
            lines = b"".join(r.iter_bytes()).decode().splitlines()
        assert lines and all(line.startswith('{"messages": [') for line in lines)
        r = alice.get("/v1/admin/export", params={"format": "parquet", "since": "2020-01-02"})
        assert r.headers["content-type"] == "application/vnd.apache.parquet"
        assert "tuneloop-export-since-2020-01-02.parquet" in r.headers["content-disposition"]
        assert r.content[:4] == b"PAR1"
