"""RemoteBackend against real HTTP servers on loopback: a second Tuneloop process as the engine, the vLLM
stand-in in front of it for runtime adapter loading, a dead port and a server too slow to answer."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.errors import (
    AdapterInUse,
    AdapterRejected,
    BackendUnavailable,
    BadRequest,
    MaxTokensTooLarge,
    PromptTooLong,
    UnknownAdapter,
)
from serving.remote import RemoteBackend
from serving.types import BASE, PRODUCTION, SamplingParams
from settings import load_settings
from tests.serving.vllm_standin import StandinState, start_standin
from tests.web.conftest import free_port, seed_data_dir

ROOT = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(max_tokens=12, temperature=0)
PROMPT = [{"role": "user", "content": "Hello, how are you today?"}]
PUSHED = "pushed-v2"  # a copy of demo-a the engine holds but the stand-in only serves once loaded


# --- servers ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(demo_model_dir, tmp_path_factory):
    """A Tuneloop app in local demo mode, as a separate process: the remote engine."""
    data_dir = tmp_path_factory.mktemp("engine") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    shutil.copytree(demo_model_dir.adapters / "demo-a", data_dir / "adapters" / PUSHED)
    port = free_port()
    log_path = data_dir.parent / "engine.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--demo", "--data-dir", str(data_dir), "--port", str(port)],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"engine app did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield {"url": url, "adapters_dir": data_dir / "adapters"}
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def standin(engine):
    running = start_standin(StandinState(base_id="tiny-demo", upstream=engine["url"], static_adapters=("demo-a",)),
                            free_port())
    yield running
    running.stop()


@pytest.fixture
def remote(engine):
    backend = RemoteBackend(f"{engine['url']}/v1", base_model="tiny-demo", timeout_s=60, max_new_tokens=64)
    yield backend
    backend.close()


def engine_answer(engine, model: str) -> str:
    """The engine's own greedy answer, asked directly (not through RemoteBackend)."""
    r = httpx.post(f"{engine['url']}/v1/chat/completions", timeout=60, json={
        "model": model, "messages": PROMPT, "max_tokens": GREEDY.max_tokens, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


class SlowHandler(http.server.BaseHTTPRequestHandler):
    def _slow(self):
        time.sleep(5)
        self.send_response(200)
        self.end_headers()

    do_GET = do_POST = _slow

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


# --- generation through a Tuneloop engine -------------------------------------------------------------
def test_streaming_matches_the_engines_own_answer(remote, engine):
    stream = remote.stream_chat(PROMPT, "demo-a", GREEDY)
    deltas = list(stream)
    c = stream.completion
    assert len(deltas) > 1 and "".join(deltas) == c.text == engine_answer(engine, "demo-a")
    assert c.adapter == "demo-a"
    assert c.finish_reason in ("stop", "length")
    assert c.prompt_tokens > 0 and 0 < c.completion_tokens <= GREEDY.max_tokens  # the engine's usage block
    assert c.first_token_s is not None and 0 < c.first_token_s <= c.latency_s


def test_base_and_production_default_to_the_engines_base(remote, engine):
    expected = engine_answer(engine, "base")
    assert remote.stream_chat(PROMPT, BASE, GREEDY).text() == expected
    stream = remote.stream_chat(PROMPT, PRODUCTION, GREEDY)
    assert stream.text() == expected and stream.completion.adapter == BASE


def test_production_alias_is_kept_client_side(remote, engine):
    remote.set_alias(PRODUCTION, "demo-b")
    stream = remote.stream_chat(PROMPT, PRODUCTION, GREEDY)
    assert stream.text() == engine_answer(engine, "demo-b")
    assert stream.completion.adapter == "demo-b"
    with pytest.raises(AdapterInUse):
        remote.unload_adapter("demo-b")  # production points at it
    with pytest.raises(UnknownAdapter):
        remote.set_alias(PRODUCTION, "no-such-adapter")
    assert remote.resolve(PRODUCTION) == "demo-b"


def test_list_adapters_reflects_the_engine(remote):
    infos = {a.name: a for a in remote.list_adapters()}
    assert {BASE, "demo-a", "demo-b", PUSHED, PRODUCTION} <= set(infos)
    assert [a.name for a in remote.list_adapters()].count(PRODUCTION) == 1  # the engine's own alias is hidden
    assert infos[PRODUCTION].meta["alias_of"] == BASE and infos[BASE].aliases == (PRODUCTION,)
    assert infos["demo-a"].meta["stale"] is False
    assert remote.health()["ok"] is True


def test_unknown_adapter_is_refused_before_streaming(remote):
    with pytest.raises(UnknownAdapter, match="no-such-adapter.*demo-a"):
        remote.stream_chat(PROMPT, "no-such-adapter", GREEDY)


def test_engine_400_becomes_prompt_too_long(remote):
    long_prompt = [{"role": "user", "content": "word " * 5000}]  # over the engine's 2048-token prompt limit
    with pytest.raises(PromptTooLong, match="the engine refused"):
        remote.stream_chat(long_prompt, "demo-a", GREEDY)


def test_stopping_early_cancels_and_releases(remote):
    stream = remote.stream_chat(PROMPT, "demo-a", SamplingParams(max_tokens=64, temperature=0))
    deltas = iter(stream)
    next(deltas)
    deltas.close()  # the consumer went away
    assert stream.completion.finish_reason == "cancelled"
    assert {a.name: a.in_flight for a in remote.list_adapters()}["demo-a"] == 0


# --- validation happens before any engine call ----------------------------------------------------------
@pytest.mark.parametrize("messages", [[], [{"role": "robot", "content": "hi"}], [{"role": "user"}]])
def test_bad_messages_raise_bad_request_without_the_engine(messages):
    backend = RemoteBackend(dead_url(), max_new_tokens=64)
    with pytest.raises(BadRequest):
        backend.stream_chat(messages, BASE, GREEDY)


def test_max_tokens_over_the_limit_raises_without_the_engine():
    backend = RemoteBackend(dead_url(), max_new_tokens=64)
    with pytest.raises(MaxTokensTooLarge):
        backend.stream_chat(PROMPT, BASE, SamplingParams(max_tokens=65))


# --- engine down or slow -------------------------------------------------------------------------------
def test_engine_down_is_reported_not_raised_at_start(tmp_path):
    url = dead_url()
    settings = load_settings(None, backend="remote", remote_url=url, data_dir=tmp_path, remote_timeout_s=5)
    started = time.monotonic()
    backend = RemoteBackend.from_settings(settings)  # must not raise: the UI and store keep working
    health = backend.health()
    assert health["ok"] is False and health["backend"] == "remote" and health["url"] == url
    assert "is down" in health["error"]
    with pytest.raises(BackendUnavailable, match=f"engine at {url} is down"):
        backend.stream_chat(PROMPT, "demo-a", GREEDY)
    names = [a.name for a in backend.list_adapters()]  # degrades to what is known
    assert names == [BASE, PRODUCTION]
    backend.set_alias(PRODUCTION, BASE)
    with pytest.raises(BackendUnavailable):
        backend.load_adapter("v1", tmp_path / "v1")
    assert time.monotonic() - started < 5  # refused connections fail fast, no hang


def test_slow_engine_times_out(slow_url):
    backend = RemoteBackend(slow_url, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="did not answer within 1 s"):
        backend.stream_chat(PROMPT, "demo-a", GREEDY)
    assert time.monotonic() - started < 3
    assert backend.health()["ok"] is False


def test_slow_engine_times_out_during_chat(engine, slow_url):
    """Model list from the real engine, chat from the slow one: the chat call itself times out."""
    backend = RemoteBackend(slow_url, timeout_s=1.0)
    backend._fetch_models = RemoteBackend(f"{engine['url']}/v1")._fetch_models  # the list answers fast
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="did not answer within 1 s"):
        backend.stream_chat(PROMPT, "demo-a", GREEDY)
    assert time.monotonic() - started < 3


# --- adapters pushed to a vLLM-like engine ----------------------------------------------------------------
def test_promoted_adapter_is_pushed_to_the_engine(standin, engine, tmp_path):
    local = tmp_path / "adapters" / PUSHED  # the app's own view of the shared adapters directory
    shutil.copytree(engine["adapters_dir"] / PUSHED, local)
    backend = RemoteBackend(standin.url, base_model="Qwen/not-this-one", adapter_dir=str(engine["adapters_dir"]))
    assert PUSHED not in {a.name for a in backend.list_adapters()}

    info = backend.load_adapter(PUSHED, local)
    expected_path = f"{engine['adapters_dir']}/{PUSHED}"
    assert standin.state.requests[-1] == ("load_lora_adapter", {"lora_name": PUSHED, "lora_path": expected_path})
    assert info.path == expected_path
    listed = {a.name: a for a in backend.list_adapters()}
    assert listed[PUSHED].path == expected_path

    backend.set_alias(PRODUCTION, PUSHED)
    stream = backend.stream_chat(PROMPT, PRODUCTION, GREEDY)
    assert stream.text() == engine_answer(engine, "demo-a")  # pushed-v2 is a copy of demo-a
    assert stream.completion.adapter == PUSHED

    assert backend.stream_chat(PROMPT, BASE, GREEDY).text() == engine_answer(engine, "base")
    assert standin.state.requests[-1][1]["model"] == "tiny-demo"  # base goes out under the engine's id

    backend.set_alias(PRODUCTION, BASE)
    backend.unload_adapter(PUSHED)
    assert standin.state.requests[-1] == ("unload_lora_adapter", {"lora_name": PUSHED})
    assert PUSHED not in {a.name for a in backend.list_adapters()}
    with pytest.raises(UnknownAdapter):
        backend.unload_adapter(PUSHED)


def test_wrong_remote_adapter_dir_is_rejected_with_a_hint(standin, tmp_path):
    local = tmp_path / "v9"
    local.mkdir()
    (local / "adapter_config.json").write_text("{}")
    backend = RemoteBackend(standin.url, adapter_dir="/nowhere/adapters")
    with pytest.raises(AdapterRejected, match="TUNELOOP_REMOTE_ADAPTER_DIR"):
        backend.load_adapter("v9", local)
    assert standin.state.requests[-1][1] == {"lora_name": "v9", "lora_path": "/nowhere/adapters/v9"}


def test_engine_without_runtime_loading_says_what_to_do(engine, tmp_path):
    local = tmp_path / "v3"
    shutil.copytree(engine["adapters_dir"] / "demo-a", local)
    running = start_standin(StandinState(base_id="tiny-demo", upstream=engine["url"], runtime_lora=False), free_port())
    try:
        backend = RemoteBackend(running.url, adapter_dir="/adapters")
        with pytest.raises(AdapterRejected, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING") as refused:
            backend.load_adapter("v3", local)
        assert "--lora-modules v3=/adapters/v3" in str(refused.value)
    finally:
        running.stop()


# --- a Tuneloop engine speaks the same runtime LoRA routes ---------------------------------------------
def test_adapter_is_pushed_to_a_tuneloop_engine(engine, tmp_path):
    backend = RemoteBackend(f"{engine['url']}/v1", adapter_dir=str(engine["adapters_dir"]), max_new_tokens=64)
    local = tmp_path / "adapters" / "tl-pushed"  # the app's view of the shared adapters directory
    shutil.copytree(engine["adapters_dir"] / "demo-b", local)
    shutil.copytree(local, engine["adapters_dir"] / "tl-pushed")
    backend.load_adapter("tl-pushed", local)
    assert "tl-pushed" in {a.name for a in backend.list_adapters()}
    backend.load_adapter("tl-pushed", local)  # vLLM's "already been loaded" 400 is accepted
    backend.set_alias(PRODUCTION, "tl-pushed")
    assert backend.stream_chat(PROMPT, PRODUCTION, GREEDY).text() == engine_answer(engine, "demo-b")
    backend.set_alias(PRODUCTION, BASE)
    backend.unload_adapter("tl-pushed")
    assert "tl-pushed" not in {a.name for a in backend.list_adapters()}
    with pytest.raises(UnknownAdapter):  # the engine's 404 for a name it does not hold
        backend.unload_adapter("tl-pushed")


def test_tuneloop_engine_refuses_paths_outside_its_adapters_dir(engine, tmp_path):
    outside = tmp_path / "evil"
    shutil.copytree(engine["adapters_dir"] / "demo-a", outside)
    (engine["adapters_dir"] / "evil-link").symlink_to(outside)
    adapters = engine["adapters_dir"]
    for path in (str(outside), f"{adapters}/../../evil", f"{adapters}/evil-link", str(adapters), "/etc"):
        r = httpx.post(f"{engine['url']}/v1/load_lora_adapter", json={"lora_name": "evil", "lora_path": path})
        assert r.status_code == 400 and "inside this engine's adapters dir" in r.text, (path, r.text)
    r = httpx.post(f"{engine['url']}/v1/load_lora_adapter", json={"lora_name": "nothing",
                                                                   "lora_path": f"{adapters}/nothing-here"})
    assert r.status_code == 404 and "No adapter found" in r.text
    r = httpx.post(f"{engine['url']}/v1/load_lora_adapter", json={"lora_name": "../x", "lora_path": f"{adapters}/demo-a"})
    assert r.status_code == 400
    assert httpx.post(f"{engine['url']}/v1/load_lora_adapter", json={"lora_name": "x"}).status_code == 400
    assert httpx.post(f"{engine['url']}/v1/unload_lora_adapter", json={}).status_code == 400
    assert "evil" not in httpx.get(f"{engine['url']}/v1/models").text
    backend = RemoteBackend(f"{engine['url']}/v1")  # no remote_adapter_dir: the app's own path is sent
    with pytest.raises(AdapterRejected, match="inside this engine's adapters dir"):
        backend.load_adapter("evil", outside)


def test_runtime_loading_switched_off_sends_nothing(standin, tmp_path):
    before = len(standin.state.requests)
    backend = RemoteBackend(standin.url, adapter_dir="/adapters", can_load_adapters=False)
    with pytest.raises(AdapterRejected, match="--lora-modules v4=/adapters/v4"):
        backend.load_adapter("v4", tmp_path / "v4")
    assert len(standin.state.requests) == before


def test_importing_the_remote_backend_does_not_import_torch():
    code = "import sys, serving.remote; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_hf_offline_mode_is_named_not_hidden(remote, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackendUnavailable, match="HF_HUB_OFFLINE"):
        remote.stream_chat(PROMPT, BASE, GREEDY)
    health = remote.health()
    assert health["ok"] is False and "HF_HUB_OFFLINE" in health["error"]


# --- an engine that is down when the app starts ----------------------------------------------------------
def test_promoter_keeps_production_while_the_engine_is_down_and_resyncs(engine, tmp_path):
    """The app starts before the engine: production stays the stored adapter, and is loaded once the
    engine answers (the stand-in, like a restarted vLLM, has nothing loaded at run time)."""
    from feedback.models import AdapterRecord
    from feedback.store import FeedbackStore
    from retrain.promotion import Promoter

    port = free_port()  # nothing listens yet
    settings = load_settings(None, backend="remote", remote_url=f"http://127.0.0.1:{port}/v1", data_dir=tmp_path,
                             remote_adapter_dir=str(engine["adapters_dir"]), remote_timeout_s=5)
    shutil.copytree(engine["adapters_dir"] / PUSHED, settings.adapters_dir / PUSHED)
    store = FeedbackStore(settings.db_path)
    backend = RemoteBackend.from_settings(settings)
    running = None
    try:
        store.register_adapter(AdapterRecord(name=PUSHED, path=str(settings.adapters_dir / PUSHED), status="candidate"))
        store.set_production(PUSHED, "test", "earlier promotion")
        promoter = Promoter(store, backend, settings)

        assert promoter.sync() is False
        assert backend._aliases[PRODUCTION] == PUSHED  # not fallen back to base
        assert store.production() == PUSHED
        with pytest.raises(BackendUnavailable):
            backend.stream_chat(PROMPT, PRODUCTION, GREEDY)
        assert promoter.resync_if_needed() is False  # still down: nothing changes
        assert backend._aliases[PRODUCTION] == PUSHED

        running = start_standin(StandinState(base_id="tiny-demo", upstream=engine["url"]), port)
        time.sleep(2.1)  # the remembered failure of the model list expires (MODELS_TTL_S)
        assert promoter.resync_if_needed() is True
        assert running.state.requests[-1] == (
            "load_lora_adapter", {"lora_name": PUSHED, "lora_path": f"{engine['adapters_dir']}/{PUSHED}"})
        stream = backend.stream_chat(PROMPT, PRODUCTION, GREEDY)
        assert stream.text() == engine_answer(engine, "demo-a") and stream.completion.adapter == PUSHED
        assert promoter.resync_if_needed() is False  # in sync: a no-op

        running.state.loaded.clear()  # the engine restarts and forgets adapters loaded at run time
        time.sleep(2.1)
        assert promoter.resync_if_needed() is True
        assert PUSHED in running.state.loaded
    finally:
        if running is not None:
            running.stop()
        backend.close()
        store.close()
