"""The OpenAI-compatible chat API over a real server on loopback."""

from __future__ import annotations

import json

import pytest

HELLO = [{"role": "user", "content": "Hello, who are you?"}]


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_healthz_and_models(running_app):
    with running_app.client() as c:
        health = c.get("/healthz").json()
        assert health["ok"] is True
        ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
    assert {"base", "production", "demo-a", "demo-b"} <= ids


def test_chat_completion_id_is_the_stored_assistant_message(running_app):
    with running_app.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "demo-a", "messages": HELLO, "max_tokens": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    text = body["choices"][0]["message"]["content"]
    stored = running_app.ctx.store.get_message(body["id"])
    assert stored is not None and stored.role == "assistant"
    assert stored.content == text and stored.adapter == "demo-a"
    assert body["usage"]["completion_tokens"] == stored.completion_tokens > 0
    history = running_app.ctx.store.conversation(stored.conversation_id)
    assert [m.role for m in history] == ["user", "assistant"]


def test_streaming_matches_non_streaming_and_is_stored(running_app):
    request = {"model": "demo-b", "messages": HELLO, "max_tokens": 12, "temperature": 0}
    with running_app.client() as c:
        plain = c.post("/v1/chat/completions", json=request).json()
        with c.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({e["id"] for e in chunks}) == 1
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in chunks)
    assert streamed == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    stored = running_app.ctx.store.get_message(chunks[0]["id"])
    assert stored is not None and stored.content == streamed


def test_conversation_continues_with_conversation_id(running_app):
    with running_app.client() as c:
        first = c.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}).json()
        answer = first["choices"][0]["message"]["content"]
        follow = [*HELLO, {"role": "assistant", "content": answer}, {"role": "user", "content": "Thanks!"}]
        second = c.post("/v1/chat/completions", json={
            "messages": follow, "max_tokens": 4, "conversation_id": first["conversation_id"]}).json()
    assert second["conversation_id"] == first["conversation_id"]
    roles = [m.role for m in running_app.ctx.store.conversation(first["conversation_id"])]
    assert roles == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("request_body", "status", "code"),
    [
        ({"messages": []}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": "hi " * 5000}]}, 400, "context_length_exceeded"),
        ({"messages": HELLO, "max_tokens": 10_000}, 400, "max_tokens_exceeded"),
        ({"messages": HELLO, "model": "no-such-adapter"}, 404, "model_not_found"),
        ({"messages": HELLO, "model": "../../etc"}, 404, "model_not_found"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "invalid_request"),
        ({"messages": HELLO, "temperature": -1}, 422, "invalid_request"),
        ({"messages": "hello"}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
    ],
)
def test_bad_input_gets_a_clear_openai_style_error(running_app, request_body, status, code):
    with running_app.client() as c:
        r = c.post("/v1/chat/completions", json=request_body)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and error["message"]
        # ... and the server keeps serving.
        ok = c.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
        assert ok.status_code == 200


def test_openai_compatible_client_can_chat(running_app):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=running_app.url + "/v1")
    out = client.chat_completion(messages=HELLO, model="demo-a", max_tokens=6)
    assert out.choices[0].message.content is not None
    streamed = list(client.chat_completion(messages=HELLO, model="demo-a", max_tokens=6, stream=True))
    assert streamed and streamed[0].id
