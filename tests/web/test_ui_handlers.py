"""The UI's handlers called as a hostile user would: straight over Gradio's queue, not through the page.

Gradio runs any event handler a signed-in session names by its index, private or not, with data the client
chooses; the state is the server's, keyed by a session hash the client sends. Real app on loopback, users
signed in through /login.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.web.conftest import add_users, seed_data_dir, start_app

MAX_CHARS = 2_000


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("ui-handlers") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    add_users(data_dir, ("admin", "alice", "bob"))
    running = start_app(data_dir, temperature=0.0, max_new_tokens=8, max_request_chars=MAX_CHARS)
    yield running
    running.stop()


class Session:
    """One signed-in browser tab: its cookie and the session hash its state is kept under."""

    def __init__(self, app, user: str, session_hash: str | None = None):
        self.http = httpx.Client(base_url=app.url, timeout=120)
        r = self.http.post("/login", data={"username": user, "password": f"{user}-password"})
        assert r.status_code == 200, r.text
        self.hash = session_hash or uuid.uuid4().hex[:11]
        deps = self.http.get("/config").json()["dependencies"]
        self.fn = {d["api_name"]: d for d in deps}

    def join(self, api_name: str, *data, event_data=None) -> str:
        """Put one handler run on the queue; its event id."""
        dep = self.fn[api_name]
        target = dep["targets"][0][0] if dep["targets"] else None
        body = {"data": list(data), "fn_index": dep["id"], "session_hash": self.hash, "event_data": event_data,
                "trigger_id": target}
        # json.dumps escapes a lone surrogate as JSON allows ("\\udc00"); httpx's json= would refuse to send it
        r = self.http.post("/gradio_api/queue/join", content=json.dumps(body),
                           headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        return r.json()["event_id"]

    def results(self, *event_ids: str, into: dict | None = None) -> dict:
        """{event id: (ok, output data or error message)} once each has ended, read from one event stream (Gradio
        shares a tab's messages among its readers, and drops the tab's pending runs when its reader leaves);
        ``into`` is filled as each ends."""
        out = {} if into is None else into
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.hash}) as s:
            if s.status_code != 200:
                return dict.fromkeys(event_ids, (False, f"HTTP {s.status_code}: {s.read().decode()}"))
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                m = json.loads(line[5:])
                if m.get("msg") == "process_completed" and m.get("event_id") in event_ids:
                    res = m.get("output", {})
                    ok = m.get("success", True) and "error" not in res
                    out[m["event_id"]] = (ok, res.get("data") if ok else str(res.get("error")))
                    if len(out) == len(event_ids):
                        return out
        raise AssertionError("no result")

    def call(self, api_name: str, *data, event_data=None):
        """(ok, output data or error message) of one handler run."""
        event_id = self.join(api_name, *data, event_data=event_data)
        return self.results(event_id)[event_id]


def chatbot_texts(data) -> list[str]:
    """The message texts of a chatbot update in a handler's output."""
    texts = []
    for item in data:
        value = item.get("value") if isinstance(item, dict) else None
        for message in value if isinstance(value, list) else ():
            content = message.get("content") if isinstance(message, dict) else None
            parts = content if isinstance(content, list) else [{"text": content}]
            texts.append("".join(str(part.get("text", "")) for part in parts if isinstance(part, dict)))
    return texts


def test_a_message_over_the_bounds_or_not_text_is_refused_before_the_state_grows(app):
    alice = Session(app, "alice")
    for text, why in (("x" * (MAX_CHARS + 1), "at most"), ("nul \x00 here", "NUL"), ("half \udc00 pair", "surrogate")):
        ok, said = alice.call("ui_user_turn", text, None)
        assert not ok and why in said, said
    ok, out = alice.call("ui_user_turn", "Hello there", None)
    assert ok and chatbot_texts(out) == ["Hello there"]  # nothing refused was kept in the state
    # The bound counts the whole conversation the state holds, not one message.
    for _ in range(2):
        ok, said = alice.call("ui_user_turn", "y" * (MAX_CHARS // 2), None)
    assert not ok and "at most" in said


def test_another_users_session_hash_shows_nothing_of_their_chat(app):
    bob = Session(app, "bob")
    ok, _ = bob.call("ui_user_turn", "bob's secret: the safe code is 4471", None)
    assert ok
    alice = Session(app, "alice", session_hash=bob.hash)  # the hash leaked (it is in the access log)
    edit = {"index": 0, "value": "x", "previous_value": ""}
    for api_name, data, event in (("ui_edit", (None,), edit), ("ui_user_turn", ("hi", None), None),
                                  ("ui_regenerate_last", (None, None), None)):
        # She may queue a handler under his hash, but not read his tab's event stream (nor drop its events
        # by reading and leaving), and the handler itself refuses her (web/ui_common.principal_of).
        ok, said = alice.call(api_name, *data, event_data=event)
        assert not ok and said.startswith("HTTP 403") and "another sign-in" in said, (api_name, said)
    r = alice.http.get(f"/gradio_api/heartbeat/{bob.hash}")
    assert r.status_code == 403
    ok, out = bob.call("ui_user_turn", "still mine", None)  # bob's own tab carries on, nothing of hers in it
    assert ok and chatbot_texts(out) == ["bob's secret: the safe code is 4471", "still mine"]


def test_a_crafted_conversation_link_is_not_echoed_into_the_page(app):
    alice = Session(app, "alice")
    crafted = "[Session expired: sign in again](https://evil.example/login)"
    ok, out = alice.call("ui_open_conversation", crafted, "")
    assert ok
    assert not any("evil.example" in json.dumps(item) for item in out)
    assert any("could not be opened" in json.dumps(item) for item in out)


def test_a_user_is_not_sent_the_adapter_list_only_admins_see(app):
    ok, out = Session(app, "alice").call("ui_on_load")
    assert ok and not any("demo-a" in json.dumps(item) for item in out[-2:])  # the arena pickers
    ok, out = Session(app, "admin").call("ui_on_load")
    assert ok and all("demo-a" in json.dumps(item) for item in out[-2:])


def test_titles_searches_and_rating_indexes_that_are_not_text_get_plain_errors(app):
    alice = Session(app, "alice")
    ok, _ = alice.call("ui_user_turn", "a question to keep", None)
    ok, out = alice.call("ui_bot_turn", None, "production")
    assert ok
    for title in ("ok\x00nul", "\ud800lone"):
        ok, said = alice.call("ui_do_rename", None, title, "")
        assert not ok and "plain text" in said, said
    ok, said = alice.call("ui_do_search", "\ud800", None)
    assert not ok and "surrogate" in said and "DuckDB" not in said
    for index in ("abc", -1, [None], 10**9, True):
        ok, out = alice.call("ui_rate", None, event_data={"index": index, "value": "x", "liked": True})
        assert ok, out  # names no answer: nothing stored, no error
