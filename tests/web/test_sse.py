"""A streaming client that goes away: generation stops at once and the turn is stored with what it was shown.

The model is a random-weight Qwen2 that never picks eos (tests/serving/conftest.py), so every answer would
run to ``max_tokens`` if nothing stopped it.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.serving.conftest import build_random_qwen
from tests.web.conftest import start_app

MAX_TOKENS = 400
ASK = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": MAX_TOKENS,
       "temperature": 0, "stream": True}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("sse")
    running = start_app(root / "data", demo=False, model=str(build_random_qwen(root / "model")),
                        max_new_tokens=MAX_TOKENS)
    yield running
    running.stop()


def read_then_leave(url: str, body: dict, deltas: int) -> tuple[list[str], str]:
    """Stream ``body``, read the first choice's message id and ``deltas`` content chunks, then drop the connection."""
    ids, text, seen = [], "", 0
    with httpx.Client(base_url=url, timeout=30) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            choice = json.loads(line[len("data: "):])["choices"][0]
            if "message_id" in choice:
                ids.append(choice["message_id"])
            elif content := choice["delta"].get("content"):
                text += content
                seen += 1
                if seen == deltas:
                    break
    return ids, text


def wait_stored(store, message_id: str, seconds: float = 20):
    deadline = time.time() + seconds
    while (stored := store.get_message(message_id)) is None:
        assert time.time() < deadline, "the abandoned turn was not stored"
        time.sleep(0.05)
    return stored


def wait_idle(backend, seconds: float = 20) -> None:
    deadline = time.time() + seconds
    while backend._worker.running or backend._worker.queue_depth:
        assert time.time() < deadline, "the worker is still generating for a client that left"
        time.sleep(0.05)


def test_a_client_that_leaves_mid_answer_stops_generation_and_its_answer_is_stored_as_shown(app):
    ids, text = read_then_leave(app.url, ASK, deltas=5)
    assert len(ids) == 1 and text
    stored = wait_stored(app.ctx.store, ids[0])
    wait_idle(app.ctx.backend)
    assert stored.finish_reason == "cancelled"
    # What the server handed the connection before it saw the client leave: what the client read, and at
    # most the chunks still in flight (a decode step or two), never the rest of the answer.
    assert stored.content.startswith(text)
    assert stored.completion_tokens < MAX_TOKENS / 2
    with httpx.Client(base_url=app.url, timeout=30) as c:  # the id the client holds can be rated at once
        r = c.post("/v1/feedback", json={"message_id": ids[0], "rating": "down"})
    assert r.status_code == 200, r.text


def test_a_client_that_leaves_an_n_choice_stream_stops_every_choice_and_stores_the_one_it_saw(app):
    before = app.ctx.store.stats()["totals"]["assistant_messages"]
    ids, text = read_then_leave(app.url, {**ASK, "n": 3}, deltas=3)
    assert len(ids) == 1  # choices are sent one after the other: the client only met the first
    stored = wait_stored(app.ctx.store, ids[0])
    wait_idle(app.ctx.backend)
    assert stored.finish_reason == "cancelled" and stored.content.startswith(text)
    # The two choices nobody was shown are stopped and not stored: their ids were never sent.
    assert app.ctx.store.stats()["totals"]["assistant_messages"] == before + 1


def test_a_client_that_reads_to_the_end_gets_every_token_stored_once(app):
    with httpx.Client(base_url=app.url, timeout=60) as c:
        r = c.post("/v1/chat/completions", json={**ASK, "stream": False, "max_tokens": 24})
    body = r.json()
    stored = app.ctx.store.get_message(body["id"])
    assert stored.finish_reason == "length" and stored.completion_tokens == 24
    assert stored.content == body["choices"][0]["message"]["content"]


def test_stop_in_the_ui_stores_what_was_shown(app):
    """The chat tab's Stop: Gradio closes the generator reading ``deltas()`` (web/ui_chat.py)."""
    from serving.types import SamplingParams
    from web.auth import LOCAL_USER, Principal

    turn = app.ctx.chat.start(Principal(LOCAL_USER, "admin"), ASK["messages"], "production", SamplingParams(temperature=0))
    deltas = turn.deltas()
    shown = "".join(next(deltas) for _ in range(4))
    deltas.close()
    stored = app.ctx.store.get_message(turn.message_id)
    assert stored.content == shown and stored.finish_reason == "cancelled"
    wait_idle(app.ctx.backend)
