"""The public Gradio endpoints (/chat, /rate, /correct) refuse what the HTTP API refuses: NUL and lone
surrogates in comments and corrections (stored before), a ``tool`` message without its ``tool_call_id``,
history items that are not messages. Each answers a plain error, never a traceback."""

from __future__ import annotations

import pytest

from tests.web.conftest import add_users, seed_data_dir, start_app
from tests.web.test_ui_handlers import Session


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("gradio-api") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    add_users(data_dir, ("admin", "alice"))
    running = start_app(data_dir, temperature=0.0, max_new_tokens=4)
    yield running
    running.stop()


def stored_text(app) -> list[str]:
    with app.ctx.store._read() as cur:
        return [r[0] for r in cur.execute("SELECT content FROM corrections UNION ALL SELECT comment FROM ratings "
                                          "WHERE comment IS NOT NULL").fetchall()]


def test_rate_and_correct_refuse_what_the_http_api_refuses(app):
    alice = Session(app, "alice")
    ok, out = alice.call("chat", "hello", [], "production", None)
    assert ok, out
    mid = out[0]["message_id"]
    for endpoint, args, says in (
            ("rate", (mid, "down", "c\u0000nul"), "comment must not contain NUL"),
            ("rate", (mid, "down", "\ud800lone"), "comment must not hold a lone surrogate"),
            ("correct", (mid, "fix\u0000ed"), "correction must not contain NUL"),
            ("correct", (mid, "\udc00"), "correction must not hold a lone surrogate"),
            ("correct", (mid, "\u200b\u2060"), "correction is empty")):
        ok, out = alice.call(endpoint, *args)
        assert not ok and says in out and "Traceback" not in out, (endpoint, args, out)
    assert stored_text(app) == []
    ok, out = alice.call("correct", mid, "Hello there.")
    assert ok and out[0]["review"] == "pending_review"


def test_chat_history_is_checked_as_the_http_api_checks_it(app):
    alice = Session(app, "alice")
    for history, says in (([{"role": "tool", "content": "42"}], "tool_call_id"),
                          (["not a message", 5], "must be an object"),
                          ([{"role": "tool", "content": "42", "tool_call_id": "x\u0000"}], "NUL")):
        ok, out = alice.call("chat", "and?", history, "production", None)
        assert not ok and says in out, (history, out)
    ok, out = alice.call("chat", "and?", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}],
                         "production", None)
    assert ok, out
