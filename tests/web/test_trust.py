"""Issue 12, tried as a hostile user would: a real multi-user server on loopback (an admin and two users).

Each test reproduces one attack that used to work and asserts that it now fails closed: other users'
answers and conversations, client-chosen conversation ids, unpromoted adapters, oversize and malformed
bodies, forged Host headers, password guessing, and a users file that disappears. (Poisoning has its own
tests; the memory and file-mode checks run the app as a process, in tests/e2e/test_trust_process.py.)
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from tests.web.conftest import add_users, raw_request, seed_data_dir, start_app

PUBLIC_URL = "http://chat.example.test:8443"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def trust(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("trust") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "alice", "bob", "carol"))
    app = start_app(data_dir, temperature=0.0, max_new_tokens=4, public_url=PUBLIC_URL,
                    max_request_bytes=1_000_000, max_messages=64, max_request_chars=200_000)
    app.tokens = tokens
    app.data_dir = data_dir
    app.clients = {name: app.client(token, timeout=60) for name, token in tokens.items()}
    yield app
    for c in app.clients.values():
        c.close()
    app.stop()


def chat(app, user: str, **body) -> httpx.Response:
    return app.clients[user].post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, **body})


def error(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    return r.json()["error"]


# --- ownership -------------------------------------------------------------------------------------------
def test_rating_or_correcting_anothers_answer_looks_like_an_unknown_id(trust):
    answer = chat(trust, "alice").json()["id"]
    bob = trust.clients["bob"]
    theirs = bob.post("/v1/feedback", json={"message_id": answer, "rating": "down", "correction": "BOB WAS HERE"})
    unknown = bob.post("/v1/feedback", json={"message_id": "0" * 32, "rating": "down", "correction": "x"})
    assert theirs.status_code == unknown.status_code == 404
    assert error(theirs)["code"] == error(unknown)["code"] == "message_not_found"
    assert error(theirs)["message"].replace(answer, "ID") == error(unknown)["message"].replace("0" * 32, "ID")
    assert not any(e.correction == "BOB WAS HERE" for e in trust.ctx.store.rated_examples())
    # The owner and an admin may.
    assert trust.clients["alice"].post("/v1/feedback", json={"message_id": answer, "rating": "up"}).status_code == 200
    assert trust.clients["admin"].post("/v1/feedback", json={"message_id": answer, "rating": "up"}).status_code == 200


def test_continuing_anothers_conversation_looks_like_an_unknown_one(trust):
    first = chat(trust, "alice").json()
    cid = first["conversation_id"]
    follow = [*HI, {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
              {"role": "user", "content": "and?"}]
    before = len(trust.ctx.store.conversation(cid))
    theirs = chat(trust, "bob", messages=follow, conversation_id=cid)
    unknown = chat(trust, "bob", messages=follow, conversation_id="f" * 32)
    assert theirs.status_code == unknown.status_code == 404
    assert error(theirs)["code"] == error(unknown)["code"] == "conversation_not_found"
    assert len(trust.ctx.store.conversation(cid)) == before
    mine = chat(trust, "alice", messages=follow, conversation_id=cid)
    assert mine.status_code == 200 and mine.json()["conversation_id"] == cid
    assert chat(trust, "admin", messages=follow, conversation_id=cid).status_code == 200


def test_a_client_cannot_choose_a_new_conversation_id(trust):
    """Ids are issued by the server: an unknown one is refused, not adopted (see docs/security.md)."""
    r = chat(trust, "alice", conversation_id="my-chosen-id")
    assert r.status_code == 404 and error(r)["code"] == "conversation_not_found"
    assert trust.ctx.store.conversation_owner("my-chosen-id") is None
    issued = chat(trust, "alice").json()["conversation_id"]
    assert issued != "my-chosen-id" and len(issued) == 32


def test_regenerating_anothers_answer_is_refused(trust):
    answer = chat(trust, "alice").json()["id"]
    r = chat(trust, "bob", replaces=answer)
    assert r.status_code == 404 and error(r)["code"] == "message_not_found"
    assert not trust.ctx.store.get_message(answer).superseded
    assert chat(trust, "alice", replaces=answer).status_code == 200
    assert trust.ctx.store.get_message(answer).superseded


def test_voting_on_anothers_battle_looks_like_an_unknown_one(trust):
    battle = trust.clients["alice"].post("/v1/arena/battles", json={"prompt": "hi", "max_tokens": 2}).json()["id"]
    bob = trust.clients["bob"]
    theirs = bob.post(f"/v1/arena/battles/{battle}/vote", json={"winner": "a"})
    unknown = bob.post(f"/v1/arena/battles/{'e' * 32}/vote", json={"winner": "a"})
    assert theirs.status_code == unknown.status_code == 404
    assert error(theirs)["code"] == error(unknown)["code"] == "battle_not_found"
    assert trust.ctx.store.get_battle(battle).votes == []
    assert trust.clients["alice"].post(f"/v1/arena/battles/{battle}/vote", json={"winner": "b"}).status_code == 200


def test_a_battle_counts_once_an_admins_vote_on_it_is_refused(trust):
    """The battle's one vote is its user's: an admin's vote beside it counted the battle twice on the board."""
    before = trust.ctx.store.arena_vote_counts()
    battle = trust.clients["alice"].post("/v1/arena/battles", json={"prompt": "hi", "max_tokens": 2}).json()["id"]
    admin = trust.clients["admin"]
    first = admin.post(f"/v1/arena/battles/{battle}/vote", json={"winner": "tie"})
    assert first.status_code == 404 and error(first)["code"] == "battle_not_found"
    assert trust.clients["alice"].post(f"/v1/arena/battles/{battle}/vote", json={"winner": "a"}).status_code == 200
    after = admin.post(f"/v1/arena/battles/{battle}/vote", json={"winner": "b"})
    assert after.status_code == 404 and error(after)["code"] == "battle_not_found"
    again = trust.clients["alice"].post(f"/v1/arena/battles/{battle}/vote", json={"winner": "b"})
    assert again.status_code == 409 and error(again)["code"] == "already_voted"
    assert [(v.user, v.winner) for v in trust.ctx.store.get_battle(battle).votes] == [("alice", "a")]
    assert sum(n for *_, n in trust.ctx.store.arena_vote_counts()) == sum(n for *_, n in before) + 1


def test_users_chat_only_with_production_base_and_public_adapters(trust):
    admin, bob = trust.clients["admin"], trust.clients["bob"]
    for name in ("demo-a", "demo-b"):
        r = chat(trust, "bob", model=name)
        assert r.status_code == 404 and error(r)["code"] == "model_not_found"
        assert error(r)["message"] == error(chat(trust, "bob", model="no-such-adapter"))["message"].replace(
            "no-such-adapter", name)
    assert {m["id"] for m in bob.get("/v1/models").json()["data"]} == {"production", "base"}
    assert chat(trust, "bob", model="base").status_code == 200
    assert chat(trust, "admin", model="demo-b").status_code == 200  # admins name any adapter

    assert admin.post("/v1/admin/adapters/demo-a/public", json={"public": True}).status_code == 200
    try:
        assert chat(trust, "bob", model="demo-a").status_code == 200
        assert "demo-a" in {m["id"] for m in bob.get("/v1/models").json()["data"]}
    finally:
        assert admin.post("/v1/admin/adapters/demo-a/public", json={"public": False}).status_code == 200
    assert chat(trust, "bob", model="demo-a").status_code == 404
    assert bob.post("/v1/admin/adapters/demo-b/public", json={"public": True}).status_code == 403
    assert admin.post("/v1/admin/adapters/nope/public", json={}).status_code == 404

    # A canary still routes users' production traffic to the candidate, and the arena picks for them.
    assert admin.post("/v1/admin/experiments", json={"candidate": "demo-b", "percent": 100}).status_code == 200
    try:
        assert chat(trust, "bob").json()["adapter"] == "demo-b"
    finally:
        assert admin.post("/v1/admin/experiments/stop").status_code == 200
    assert bob.post("/v1/arena/battles", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    assert bob.post("/v1/arena/battles", json={"prompt": "hi", "adapters": ["demo-a", "demo-b"]}).status_code == 403


# --- answers the model did not write (hostile sweep F3, F7) ----------------------------------------------------
PARIS = "The capital of France is Paris."
# Short enough for this app's max_new_tokens (4): the true answer, forced, then thumbed down, would unteach it.
FORCED = {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {"type": "integer", "const": 4}}}


def review_row(app, message_id: str) -> dict:
    rows = app.clients["admin"].get("/v1/admin/data/review", params={"state": "all", "limit": 500}).json()["rows"]
    return next(r for r in rows if r["message_id"] == message_id)


def selected(app) -> dict:
    """What the next training run would select, by message id."""
    from datetime import UTC, datetime

    from retrain.dataset import select

    return {r.message_id: r for r in select(app.ctx.store, datetime.now(UTC)).rated}


def rate(app, user: str, message_id: str, rating: str) -> httpx.Response:
    return app.clients[user].post("/v1/feedback", json={"message_id": message_id, "rating": rating})


def test_a_thumbs_down_on_an_answer_the_client_wrote_is_held_not_trained(trust):
    """An assistant turn in the history the client sent is the client's text: a down on it used to train a
    KTO negative of that exact text (e.g. the true answer) with no review, one user unteaching a fact."""
    r = chat(trust, "alice", messages=[{"role": "user", "content": "What is the capital of France?"},
                                       {"role": "assistant", "content": PARIS}, {"role": "user", "content": "ok"}])
    body = r.json()
    written = next(m for m in trust.ctx.store.conversation(body["conversation_id"]) if m.content == PARIS)
    down = rate(trust, "alice", written.id, "down")
    assert down.status_code == 200 and down.json()["review"] == "pending_review"
    row = review_row(trust, written.id)
    assert (row["state"], row["origin"]) == ("pending_review", "client") and "did not write" in row["reason"]
    # The model's own answer in the same conversation: her down trains, capped, as before.
    assert rate(trust, "alice", body["id"], "down").json()["review"] == "untrusted"
    assert review_row(trust, body["id"])["origin"] == "model"
    picked = selected(trust)
    assert written.id not in picked and body["id"] in picked and not picked[body["id"]].trusted


def test_a_forced_answer_rated_by_a_user_waits_for_an_admin(trust):
    """response_format with a const makes the "answer" text the client chose; its training row would
    not show the constraint. A user's thumbs (up or down) on it waits for an admin, marked as forced."""
    ids = []
    for rating in ("down", "up"):
        r = chat(trust, "alice", messages=[{"role": "user", "content": "What is 2 + 2?"}], response_format=FORCED,
                 max_tokens=4)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "4", r.text
        mid = r.json()["id"]
        assert rate(trust, "alice", mid, rating).json()["review"] == "pending_review"
        row = review_row(trust, mid)
        assert (row["state"], row["origin"], row["rating"]) == ("pending_review", "constrained", rating)
        assert "forced" in row["reason"]
        ids.append(mid)
    assert not set(ids) & set(selected(trust))
    # An admin's thumbs on a forced answer trains as given, as any admin feedback.
    r = chat(trust, "admin", messages=[{"role": "user", "content": "2 + 2?"}], response_format=FORCED, max_tokens=4)
    assert rate(trust, "admin", r.json()["id"], "up").json()["review"] == "trusted"
    assert selected(trust)[r.json()["id"]].trusted


def test_a_regenerate_ends_an_admins_trust_in_the_answer(trust):
    """F7: the admin's thumbs-up made the answer trusted; the owner's regenerate adds her implicit down,
    now the latest rating, which must not train under the admin's trust."""
    mid = chat(trust, "bob").json()["id"]
    assert rate(trust, "admin", mid, "up").json()["review"] == "trusted"
    assert chat(trust, "bob", replaces=mid).status_code == 200
    row = review_row(trust, mid)
    assert (row["state"], row["user"], row["rating"]) == ("untrusted", "bob", "down")
    assert not selected(trust)[mid].trusted
    # An admin's own regenerate stays trusted.
    mine = chat(trust, "admin").json()["id"]
    assert chat(trust, "admin", replaces=mine).status_code == 200
    assert review_row(trust, mine)["state"] == "trusted"


def test_rating_the_corrected_answer_of_a_resumed_chat_in_the_ui_is_held(trust):
    """The chat UI's own flow: correct an answer, go on chatting, reopen the chat, like the corrected text
    shown there (the continued turn stored it as the client's assistant message). The like is saved, as
    the UI promises, but waits for an admin; it used to train as a model answer's thumbs-up."""
    from tests.web.test_ui_handlers import Session

    ui = Session(trust, "carol")
    assert ui.call("ui_user_turn", "What is the capital of France?", None)[0]
    assert ui.call("ui_bot_turn", None, "production")[0]
    ok, _ = ui.call("ui_edit", None, event_data={"index": 1, "value": "The capital of France is Berlin.",
                                                 "previous_value": ""})
    assert ok
    assert ui.call("ui_user_turn", "thanks", None)[0] and ui.call("ui_bot_turn", None, "production")[0]
    cid = trust.ctx.store.list_conversations("carol")[0].id
    again = Session(trust, "carol")
    assert again.call("ui_open_conversation", cid, "")[0]
    ok, out = again.call("ui_rate", None, event_data={"index": 1, "value": "x", "liked": True})
    assert ok and any("waits for an admin" in o for o in out if isinstance(o, str)), out
    rows = trust.clients["admin"].get("/v1/admin/data/review", params={"state": "all", "user": "carol"}).json()["rows"]
    liked = next(r for r in rows if r["rating"] == "up")
    assert (liked["answer"], liked["origin"], liked["state"]) == ("The capital of France is Berlin.", "client",
                                                                 "pending_review")
    assert not {r["message_id"] for r in rows} & set(selected(trust))


def test_a_correction_of_an_answer_an_admin_set_aside_is_not_promised_to_teach(trust):
    """The chat UI says what the store did: a correction of an answer an admin discarded stays discarded
    (feedback.store_review), so it waits for an admin, not "will be used to teach the model"."""
    from tests.web.test_ui_handlers import Session

    ui = Session(trust, "carol")
    assert ui.call("ui_user_turn", "What is 2 + 2?", None)[0] and ui.call("ui_bot_turn", None, "production")[0]
    store = trust.ctx.store
    mid = store.conversation(store.list_conversations("carol")[0].id)[-1].id
    assert ui.call("ui_rate", None, event_data={"index": 1, "value": "x", "liked": False})[0]
    assert store.discard_rows([mid], "admin") == 1
    ok, out = ui.call("ui_edit", None, event_data={"index": 1, "value": "4.", "previous_value": ""})
    said = [o for o in out if isinstance(o, str)]
    assert ok and review_row(trust, mid)["state"] == "discarded"
    assert any("waits for an admin" in o for o in said) and not any("will be used" in o for o in said), said


# --- bounded requests ----------------------------------------------------------------------------------------
def test_an_oversize_body_is_refused_before_auth_and_before_it_is_read(trust):
    host = trust.url.removeprefix("http://")
    # No token at all: the size is refused first (a 100 MB body was read in full before the 401).
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: 100000000\r\n\r\n")
    started = time.monotonic()
    status, body = raw_request(trust.url, head, [b"{" + b" " * 65535] * 4)
    assert status == 413 and b"request_too_large" in body
    assert time.monotonic() - started < 10
    # Chunked, with no Content-Length: counted as it arrives and cut off at the limit.
    head = (f"POST /v1/feedback HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"Authorization: Bearer {trust.tokens['bob']}\r\ntransfer-encoding: chunked\r\n\r\n")
    status, body = raw_request(trust.url, head, (b" " * 65536 for _ in range(64)), chunked=True)
    assert status == 413 and b"request_too_large" in body
    # The UI's routes are behind the same limit.
    head = f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: {host}\r\ncontent-length: 5000000\r\n\r\n"
    assert raw_request(trust.url, head)[0] == 413


def test_message_count_and_total_characters_are_bounded_before_tokenizing(trust):
    r = chat(trust, "bob", messages=[{"role": "user", "content": "x"}] * 65)
    assert r.status_code == 400 and error(r)["code"] == "request_too_large" and "65 messages" in error(r)["message"]
    r = chat(trust, "bob", messages=[{"role": "user", "content": "x" * 90_000}] * 3)
    assert r.status_code == 400 and error(r)["code"] == "request_too_large" and "characters" in error(r)["message"]
    r = trust.clients["bob"].post("/v1/arena/battles", json={"prompt": "x" * 250_000})
    assert r.status_code == 400 and error(r)["code"] == "request_too_large"


@pytest.mark.parametrize("user, path, body", [
    ("admin", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "adapters/demo-a\x00"}),  # was a 500
    ("bob", "/v1/chat/completions", {"messages": HI, "conversation_id": "abc\nFORGED log line"}),
    ("bob", "/v1/chat/completions", {"messages": HI, "replaces": "abc\r\n"}),
    ("bob", "/v1/chat/completions", {"messages": HI, "model": "demo-a\x00"}),
    ("bob", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a\x00b"}]}),
    ("bob", "/v1/feedback", {"message_id": "abc\n", "rating": "up"}),
    ("bob", "/v1/feedback", {"message_id": "../../etc/passwd", "rating": "up"}),
    ("bob", "/v1/feedback", {"message_id": "a" * 129, "rating": "up"}),
    ("bob", "/v1/arena/battles", {"prompt": "hi", "adapters": ["demo-a\u2028", "demo-b"]}),
    ("admin", "/v1/admin/experiments", {"candidate": "demo-b\x1b[2J"}),
])
def test_nul_control_characters_and_unsafe_ids_are_400(trust, user, path, body):
    r = trust.clients[user].post(path, json=body)
    assert r.status_code == 400, r.text
    assert error(r)["code"] in ("nul_character", "control_characters", "invalid_id", "invalid_request")


def test_unsafe_ids_in_paths_are_400(trust):
    bob = trust.clients["bob"]
    assert bob.post("/v1/arena/battles/a%0Ab/vote", json={"winner": "a"}).status_code == 400
    assert trust.clients["admin"].get("/v1/admin/runs/x%00y").status_code == 400


# --- the Host header -------------------------------------------------------------------------------------------
def test_the_ui_root_url_comes_from_settings_not_from_the_host_header(trust):
    port = trust.url.rsplit(":", 1)[1]
    with httpx.Client(base_url=trust.url, timeout=30) as c:
        forged = c.get("/config", headers={"Host": f"evil.example:{port}"})
        assert forged.status_code == 400 and error(forged)["code"] == "unknown_host"
        # A DNS-rebinding page reaches the API with its own name as Host: refused the same way.
        assert c.get("/healthz", headers={"Host": "rebind.evil.example"}).status_code == 400
        assert c.post("/login", data={"username": "alice", "password": "alice-password"}).status_code == 200
        config = c.get("/config", headers={"X-Forwarded-Host": "evil.example"})
        assert config.status_code == 200 and "evil" not in config.text
        assert config.json()["root"] == PUBLIC_URL
        # The name in public_url is one the server answers to.
        assert c.get("/healthz", headers={"Host": "chat.example.test:8443"}).status_code == 200


# --- logins ------------------------------------------------------------------------------------------------------
def login(app, name: str, password: str) -> int:
    with httpx.Client(base_url=app.url, timeout=60) as c:
        return c.post("/login", data={"username": name, "password": password}).status_code


def test_password_guessing_locks_the_name_out(trust):
    assert login(trust, "carol", "carol-password") == 200
    for i in range(5):
        assert login(trust, "carol", f"guess-{i}") != 200
    assert login(trust, "carol", "carol-password") != 200  # the right password too, until the window passes
    assert login(trust, "alice", "alice-password") == 200  # other names are not affected


# --- fail closed ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["removed", "emptied", "garbled", "unreadable"])
def test_a_lost_users_file_refuses_every_request(trust, damage, caplog):
    if damage == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = trust.data_dir / "users.toml"
    saved = path.read_bytes()
    anon = httpx.Client(base_url=trust.url, timeout=30)
    try:
        if damage == "removed":
            path.unlink()
        elif damage == "emptied":
            path.write_text("")
        elif damage == "garbled":
            path.write_text("[users.alice\nrole = ")
        else:
            path.chmod(0)
        for client, url in [(anon, "/v1/models"), (anon, "/v1/admin/runs"), (anon, "/"), (anon, "/healthz"),
                            (trust.clients["admin"], "/v1/admin/runs"), (trust.clients["bob"], "/v1/models")]:
            r = client.get(url)
            assert r.status_code == 503, (url, r.status_code, r.text[:200])
            assert error(r)["code"] == "users_unavailable"
        r = anon.post("/v1/chat/completions", json={"messages": HI})
        assert r.status_code == 503
        assert any("users file" in rec.getMessage() and rec.levelname == "ERROR" for rec in caplog.records)
    finally:
        path.write_bytes(saved)
        path.chmod(0o600)
        anon.close()
    assert trust.clients["bob"].get("/v1/models").status_code == 200
    assert httpx.get(f"{trust.url}/v1/models", timeout=30).status_code == 401


def test_single_user_mode_answers_loopback_only_at_run_time(tmp_path, demo_model_dir):
    """With no users the app is open to whoever reaches it, so the loopback rule is checked per request
    too: here the settings say the server listens beyond loopback (as after a config change)."""
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir, host="0.0.0.0", max_new_tokens=2)  # uvicorn binds loopback; the guard reads settings
    try:
        r = httpx.get(f"{app.url}/v1/models", timeout=30)
        assert r.status_code == 503 and error(r)["code"] == "single_user_loopback_only"
        assert httpx.get(f"{app.url}/", timeout=30).status_code == 503  # the UI too
    finally:
        app.stop()
