"""The arena under load and failure, with a real app on loopback whose backend is a real engine on loopback
(an OpenAI-compatible server whose answers the test controls): a user over their cap of running battles
is refused while others are served; a battle whose side fails mid-answer stops the other side's generation
and says so in the shared error words, through the API and the Arena tab's handler alike."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import gradio as gr
import pytest

from tests.web.conftest import add_users, start_app
from tests.web.test_ui_handlers import Session
from web.ui_arena import battle_updates

BASE_ID = "tiny"
ADAPTER = "lora-x"
HOLD, FAIL = "please hold", "please fail"  # prompts the engine answers slowly / by failing on one side
MAX_TOKENS = 2000  # FAIL's streaming side would take 100 s to reach it (the engine stops at 60 s)


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta(text: str, model: str) -> bytes:
    return sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


class Engine(http.server.BaseHTTPRequestHandler):
    """HOLD: one word, then nothing until ``server.gate`` opens. FAIL: the adapter fails after two words
    (an in-band error event, as vLLM sends one) while the base model streams words until the client hangs up,
    which ``server.hung_up`` records. Anything else: a short answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": BASE_ID}, {"id": ADAPTER, "parent": BASE_ID, "root": "/x"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        model, prompt = request["model"], request["messages"][-1]["content"]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            if prompt == HOLD:
                self.wfile.write(delta("wait ", model))
                self.wfile.flush()
                with self.server.lock:
                    self.server.held += 1
                self.server.gate.wait(60)
            elif prompt == FAIL and model == ADAPTER:
                self.wfile.write(delta("one ", model) + delta("two ", model))
                self.wfile.flush()
                time.sleep(0.3)  # the other side is streaming by now
                self.wfile.write(sse({"error": "the engine ran out of memory"}))
                return
            elif prompt == FAIL:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    self.wfile.write(delta("word ", model))
                    self.wfile.flush()
                    time.sleep(0.05)
                return
            self.wfile.write(delta("hello", model) + b"data: [DONE]\n\n")
        except OSError:
            self.server.hung_up.append(time.monotonic())  # the app closed the stream: generation stops


class EngineServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


@pytest.fixture
def engine():
    server = EngineServer(("127.0.0.1", 0), Engine)
    server.gate, server.lock, server.held, server.hung_up = threading.Event(), threading.Lock(), 0, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.gate.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def app(engine, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    tokens = add_users(data_dir, ("admin", "alice", "bob"))
    # arena_battles_per_user is left at its default (2); a stream may run far longer than the test waits.
    running = start_app(data_dir, demo=False, backend="remote", model=BASE_ID, max_new_tokens=MAX_TOKENS,
                        remote_url=f"http://127.0.0.1:{engine.server_address[1]}/v1", remote_stream_timeout_s=120)
    running.tokens = tokens
    yield running
    engine.gate.set()
    running.stop()


def battle(app, user: str, prompt: str, timeout: float = 20):
    with app.client(app.tokens[user], timeout=timeout) as c:
        return c.post("/v1/arena/battles", json={"prompt": prompt, "max_tokens": MAX_TOKENS})


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_user_over_the_cap_gets_429_while_another_is_served(app, engine):
    assert app.ctx.settings.arena_battles_per_user == 2
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(battle, app, "alice", HOLD, 60) for _ in range(2)]
        wait_for(lambda: engine.held == 4)  # both of alice's battles are generating, both sides each
        over = battle(app, "alice", "one more")
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert error["code"] == "too_many_battles" and "2 arena battle(s) running" in error["message"]
        theirs = battle(app, "bob", "my turn")
        assert theirs.status_code == 200, theirs.text
        engine.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
    assert battle(app, "alice", "one more").status_code == 200  # her slots came back when the battles ended
    for _ in range(3):  # ... and come back when a battle fails
        failed = battle(app, "alice", FAIL)
        assert failed.status_code == 503 and "ran out of memory" in failed.json()["error"]["message"], failed.text


def test_a_side_failing_mid_answer_stops_the_other_through_the_api(app, engine):
    for i in range(4):  # sides are drawn at random: the failing one is read on the worker or on the request
        failed = battle(app, "alice", FAIL)
        assert failed.status_code == 503, failed.text
        # The side still streaming is closed at its next word, not left generating until its end (60 s here).
        wait_for(lambda n=i + 1: len(engine.hung_up) == n, timeout=3)


def test_the_arena_tab_stops_the_other_side_when_one_fails(app, engine):
    """Through Gradio's queue, as the page calls the Compare handler."""
    alice = Session(app, "alice")
    ok, out = alice.call("ui_fight", "hi", None, None)
    assert ok and "Which answer is better?" in json.dumps(out), out
    ok, said = alice.call("ui_fight", FAIL, None, None)
    assert not ok and "the engine ran out of memory" in said, said
    wait_for(lambda: engine.hung_up, timeout=3)


def test_the_arena_tabs_errors_go_through_the_shared_mapping(app, engine):
    with pytest.raises(gr.Error) as shown:  # not the backend's exception, shown as whatever str() gives
        for _ in battle_updates(app.ctx, "alice", FAIL):
            pass
    assert shown.value.message.startswith("engine at http://127.0.0.1:") and "ran out of memory" in shown.value.message
    with pytest.raises(gr.Error) as shown:
        next(battle_updates(app.ctx, "alice", "hi", ("lora-x", "nope")))
    assert "no adapter named 'nope'" in shown.value.message


def test_the_arena_tab_refuses_a_battle_over_the_cap_in_words(app, engine):
    running = [battle_updates(app.ctx, "bob", HOLD) for _ in range(2)]
    for updates in running:
        next(updates)  # generating: its first word is on the page
    over = battle_updates(app.ctx, "bob", "one more")
    with pytest.raises(gr.Error) as shown:
        next(over)
    assert "2 arena battle(s) running" in shown.value.message
    next(battle_updates(app.ctx, "alice", "mine"))  # another user is served meanwhile
    running[0].close()  # the page went away: the slot comes back
    assert next(battle_updates(app.ctx, "bob", "one more"))[0] is None


def test_a_users_battle_in_the_arena_tab_does_not_hold_up_another_users(app, engine):
    """Through Gradio's queue: the per-user cap is the arena tab's limit, not one battle at a time for everyone
    (Gradio's default concurrency of an event is 1, so one user's slow battle made every other user wait)."""
    alice, bob = Session(app, "alice"), Session(app, "bob")
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(alice.call, "ui_fight", HOLD, None, None)
        wait_for(lambda: engine.held == 2)  # alice's battle is generating, both sides
        theirs = pool.submit(bob.call, "ui_fight", "hi", None, None)
        try:
            ok, out = theirs.result(timeout=15)
        finally:
            engine.gate.set()
        assert ok and "Which answer is better?" in json.dumps(out), out
        assert held.result()[0]
