"""RemoteBackend against engines that misbehave, real HTTP servers on loopback: one that ignores max_tokens
and streams forever, one enormous chunk, keep-alives without end, error bodies of megabytes, a model list
of made-up names or too many bytes. Each request ends, within bounds, with a clear error or a cut answer."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time

import pytest

from serving.errors import BackendUnavailable, UnknownAdapter
from serving.remote import MAX_CHARS_PER_TOKEN, MAX_ERROR_CHARS, MAX_MODELS_BYTES, RemoteBackend
from serving.types import BASE, PRODUCTION, SamplingParams
from tests.web.conftest import start_app

PROMPT = [{"role": "user", "content": "Hello"}]
MAX_TOKENS = 8
BASE_ID = "tiny"
HOSTILE_NAMES = ["<img src=x onerror=alert(1)>", "a\u0000b", "../../etc", "x" * 100_000, "", "has space"]


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def delta(text: str) -> bytes:
    return sse({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": BASE_ID,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


class HostileEngine(http.server.BaseHTTPRequestHandler):
    """``server.mode`` picks how chat misbehaves; ``server.models`` is the /v1/models body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200, self.server.models)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        mode = self.server.mode
        if mode == "huge_error":
            return self._send(500, json.dumps({"error": {"message": "E" * 1_000_000}}).encode())
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            if mode == "forever":  # ignores max_tokens
                while True:
                    self.wfile.write(delta("word "))
            elif mode == "one_huge_chunk":
                self.wfile.write(delta("X" * 5_000_000) + b"data: [DONE]\n\n")
            elif mode == "bad_usage":  # counts no token column holds
                self.wfile.write(delta("hello") + sse({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                                        "model": BASE_ID, "choices": [], "usage": self.server.usage}))
                self.wfile.write(b"data: [DONE]\n\n")
            elif mode == "html":  # a proxy's page, say, with a 200
                self.wfile.write(b"<html><body>Welcome</body></html>")
            elif mode == "keepalives":
                while True:
                    self.wfile.write(b": ping\n\n")
                    self.wfile.flush()
                    time.sleep(0.2)
        except OSError:
            pass  # the client hung up: what a good engine sees too


class EngineServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # the app hanging up between requests is expected
            super().handle_error(request, client_address)


@pytest.fixture
def engine():
    server = EngineServer(("127.0.0.1", 0), HostileEngine)
    server.daemon_threads = True
    server.mode = "forever"
    server.models = json.dumps({"data": [{"id": BASE_ID}]}).encode()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def drained(backend: RemoteBackend, within_s: float = 30):
    """(completion, error) of one streamed answer, read in a thread: a hang fails the test, not the run."""
    result = {}

    def read():
        try:
            stream = backend.stream_chat(PROMPT, BASE, SamplingParams(max_tokens=MAX_TOKENS, temperature=0))
            stream.text()
            result["completion"] = stream.completion
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(within_s)
    assert not thread.is_alive(), f"the answer was still streaming after {within_s} s"
    return result.get("completion"), result.get("error")


def test_an_engine_that_ignores_max_tokens_is_cut_at_the_limit(engine):
    completion, error = drained(RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5))
    assert error is None and completion.finish_reason == "length"
    assert 0 < len(completion.text) <= MAX_TOKENS * MAX_CHARS_PER_TOKEN


def test_a_stream_closed_before_it_is_read_gives_its_adapter_back(engine):
    """As when the second of n answers fails to start: the first is closed unread."""
    backend = RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5)
    stream = backend.stream_chat(PROMPT, BASE, SamplingParams(max_tokens=MAX_TOKENS))
    stream.close()
    assert backend.list_adapters()[0].in_flight == 0  # else unloading it would wait, then fail AdapterInUse
    assert stream.completion.finish_reason == "cancelled"


def test_one_enormous_chunk_is_cut_to_what_max_tokens_allows(engine):
    engine.mode = "one_huge_chunk"
    completion, error = drained(RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5))
    assert error is None and completion.finish_reason == "length"
    assert completion.text == "X" * (MAX_TOKENS * MAX_CHARS_PER_TOKEN)


def test_keepalives_without_end_are_cut_at_the_stream_timeout(engine):
    """Each ping restarts the read timeout, so only the whole stream's deadline ends this one."""
    engine.mode = "keepalives"
    backend = RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5, stream_timeout_s=1.5)
    started = time.monotonic()
    completion, error = drained(backend)
    assert isinstance(error, BackendUnavailable) and "did not finish the answer within 1.5 s" in str(error)
    assert time.monotonic() - started < 10
    assert backend.list_adapters()[0].in_flight == 0  # the stream's hold on the adapter was given back


def test_a_page_that_is_no_event_stream_is_an_engine_failure_not_an_empty_answer(engine):
    engine.mode = "html"
    completion, error = drained(RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5))
    assert isinstance(error, BackendUnavailable) and "sent no chat completion chunks" in str(error)


def test_an_engine_error_of_a_megabyte_is_reported_in_a_few_hundred_characters(engine):
    engine.mode = "huge_error"
    completion, error = drained(RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5))
    assert isinstance(error, BackendUnavailable) and "HTTP 500: EEE" in str(error)
    assert len(str(error)) < MAX_ERROR_CHARS + 200


def test_made_up_model_names_are_not_taken_for_adapters(engine):
    engine.models = json.dumps({"data": [{"id": BASE_ID}, {"id": "v1", "root": {"not": "a path"}},
                                         *({"id": name} for name in HOSTILE_NAMES), {"id": 5}, "junk"]}).encode()
    backend = RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5)
    adapters = {a.name: a for a in backend.list_adapters()}
    assert set(adapters) == {BASE, "v1", PRODUCTION} and adapters["v1"].path is None
    with pytest.raises(UnknownAdapter) as err:
        backend.resolve("x" * 100_000)
    assert len(str(err.value)) < 500 and "it serves: base, v1" in str(err.value)


def test_a_model_list_over_the_byte_cap_is_an_engine_failure(engine):
    engine.models = json.dumps({"data": [{"id": f"m{i}"} for i in range(MAX_MODELS_BYTES // 10)]}).encode()
    backend = RemoteBackend(url_of(engine), base_model=BASE_ID, timeout_s=5)
    health = backend.health()
    assert health["ok"] is False and f"over {MAX_MODELS_BYTES} bytes" in health["error"]


@pytest.fixture
def remote_app(engine, tmp_path):
    """A single-user app whose backend is the hostile engine."""
    app = start_app(tmp_path / "data", demo=False, backend="remote", remote_url=url_of(engine), model=BASE_ID,
                    max_new_tokens=MAX_TOKENS, remote_timeout_s=5)
    yield app
    app.stop()


def test_the_app_answers_and_stores_a_bounded_answer_from_an_engine_that_never_stops(remote_app):
    with remote_app.client() as client:
        r = client.post("/v1/chat/completions", json={"messages": PROMPT}, timeout=30)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    stored = remote_app.ctx.store.get_message(r.json()["id"])
    assert stored.content == choice["message"]["content"]
    assert 0 < len(stored.content) <= MAX_TOKENS * MAX_CHARS_PER_TOKEN


@pytest.mark.parametrize("usage", [{"prompt_tokens": 10**30, "completion_tokens": 1},  # failed the store's batch
                                   {"prompt_tokens": 3, "completion_tokens": "lots"}])  # failed the request (500)
def test_token_counts_no_column_holds_are_stored_as_unknown(remote_app, engine, usage):
    engine.mode, engine.usage = "bad_usage", usage
    with remote_app.client() as client:
        r = client.post("/v1/chat/completions", json={"messages": PROMPT}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "hello"
    assert remote_app.ctx.store.get_message(r.json()["id"]).content == "hello"
