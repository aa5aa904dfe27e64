"""Through Gradio's queue, as the page calls its handlers: one user's slow answer does not hold up another
user's (Gradio runs one event of a kind at a time unless told otherwise; the chat tab's answers are bounded
by the backend's scheduler, as the HTTP API's are)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from tests.web.test_arena_fairness import FAIL, HOLD, app, engine, wait_for  # noqa: F401 (fixtures)
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



def test_a_message_sent_while_the_answer_is_written_is_refused_and_kept(app, engine):  # noqa: F811
    """The page lets Send be pressed again once the message shows (only the answer is still pending): the
    second message used to be taken into the state and then overwritten by the running answer's updates,
    lost from the page, the box and the store alike."""
    alice = Session(app, "alice")
    assert alice.call("ui_user_turn", HOLD, None)[0]
    answer = alice.join("ui_bot_turn", None, "production")
    wait_for(lambda: engine.held == 1)
    second = alice.join("ui_user_turn", "a second question", None)
    got = {}
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(alice.results, answer, second, into=got)
        try:
            wait_for(lambda: second in got)
        finally:
            engine.gate.set()
        reader.result(timeout=30)
    assert got[answer][0]
    ok, said = got[second]
    assert not ok and "still being written" in said, said  # an error, so the page's box keeps the text
    assert alice.call("ui_user_turn", "a second question", None)[0]  # once the answer is in, it goes through
    assert alice.call("ui_bot_turn", None, "production")[0]
    [conv] = app.ctx.store.list_conversations("alice")
    view = app.ctx.store.load_conversation("alice", conv.id)
    assert [m.content for m in view.messages if m.role != "system"] == [HOLD, "wait hello", "a second question",
                                                                          "hello"]


def test_one_tab_gets_one_answer_at_a_time(app, engine):  # noqa: F811
    """A client calling the queue itself could run a tab's answer twice at once: both grew the same state,
    the last to end overwriting the other's answer on the page while both were stored."""
    alice = Session(app, "alice")
    assert alice.call("ui_user_turn", "hi", None)[0] and alice.call("ui_bot_turn", None, "production")[0]
    assert alice.call("ui_user_turn", HOLD, None)[0]  # in a stored conversation: both would be stored
    first = alice.join("ui_bot_turn", None, "production")
    wait_for(lambda: engine.held == 1)
    second = alice.join("ui_bot_turn", None, "production")
    got = {}
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(alice.results, first, second, into=got)
        try:
            wait_for(lambda: second in got or engine.held == 2)
        finally:
            engine.gate.set()
        reader.result(timeout=30)
    assert got[first][0]
    ok, said = got[second]
    assert not ok and "still being written" in said, said
    assert engine.held == 1  # the second never reached the engine


def test_after_stop_the_tab_takes_the_next_message_and_keeps_the_stopped_answer(app, engine):  # noqa: F811
    """Stop ends the answer (Gradio closes its generator), and with it the tab's turn. The answer is stored as far
    as it was shown, and the tab keeps it too: the next message's history used to leave it out, so the stored
    conversation had two user messages in a row and the cut answer vanished from the page."""
    alice = Session(app, "alice")
    assert alice.call("ui_user_turn", FAIL, None)[0]  # the engine streams words until the app hangs up
    answer = alice.join("ui_bot_turn", None, "production")
    got = {}
    with ThreadPoolExecutor(1) as pool:
        reader = pool.submit(alice.results, answer, into=got)
        time.sleep(0.5)  # words are streaming
        r = alice.http.post("/gradio_api/cancel", json={"session_hash": alice.hash, "event_id": answer,
                                                         "fn_index": alice.fn["ui_bot_turn"]["id"]})
        assert r.status_code == 200, r.text
        reader.result(timeout=30)
    wait_for(lambda: engine.hung_up)
    assert alice.call("ui_user_turn", "next", None)[0] and alice.call("ui_bot_turn", None, "production")[0]
    [conv] = app.ctx.store.list_conversations("alice")
    view = app.ctx.store.load_conversation("alice", conv.id)
    shown = [(m.role, m.content) for m in view.messages if m.role != "system"]
    assert [role for role, _ in shown] == ["user", "assistant", "user", "assistant"], shown
    assert shown[1][1].startswith("word ") and shown[2][1] == "next"
