"""Through Gradio's queue, as the page calls its handlers: one user's slow answer does not hold up another
user's (Gradio runs one event of a kind at a time unless told otherwise; the chat tab's answers are bounded
by the backend's scheduler, as the HTTP API's are)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tests.web.test_arena_fairness import HOLD, app, engine, wait_for  # noqa: F401 (fixtures)
from tests.web.test_ui_handlers import Session


def test_a_users_slow_chat_answer_does_not_hold_up_another_users(app, engine):  # noqa: F811
    alice, bob = Session(app, "alice"), Session(app, "bob")
    assert alice.call("ui_user_turn", HOLD, None)[0] and bob.call("ui_user_turn", "hi", None)[0]
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(alice.call, "ui_bot_turn", None, "production")
        wait_for(lambda: engine.held == 1)  # alice's answer is generating
        try:
            ok, out = pool.submit(bob.call, "ui_bot_turn", None, "production").result(timeout=15)
        finally:
            engine.gate.set()
        assert ok and "hello" in json.dumps(out), out
        assert held.result()[0]
