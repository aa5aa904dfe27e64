"""Batched, mixed-adapter generation through the worker equals each request run alone."""

import threading
import time

import pytest

from serving.demo_model import DEMO_ADAPTERS
from serving.local import LocalBackend
from serving.types import BASE, PRODUCTION, SamplingParams
from tests.serving.conftest import GREEDY, PROMPT


def test_adapters_change_the_answer(solo_answers):
    texts = {name: text for name, (text, _) in solo_answers.items()}
    assert len(set(texts.values())) == 3, texts
    assert all(n == GREEDY.max_tokens for _, n in solo_answers.values())


def test_mixed_adapter_batch_equals_solo(backend, solo_answers):
    before = backend._worker.steps
    names = [BASE, *DEMO_ADAPTERS, BASE, "demo-a"]
    start = threading.Barrier(len(names))
    results = {}

    def ask(i, name):
        start.wait()
        stream = backend.stream_chat(PROMPT, name, GREEDY)
        results[i] = (stream.text(), stream.completion)

    threads = [threading.Thread(target=ask, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Fewer decode steps than the requests' tokens together: they really shared steps.
    assert backend._worker.steps - before < len(names) * GREEDY.max_tokens
    for i, name in enumerate(names):
        text, completion = results[i]
        assert text == solo_answers[name][0], name
        assert completion.adapter == name
        assert completion.finish_reason == "length"
        assert completion.completion_tokens == GREEDY.max_tokens
        assert completion.prompt_tokens > 0 and completion.first_token_s is not None
        assert completion.latency_s >= completion.first_token_s


def test_different_lengths_in_one_batch(backend, solo_answers):
    short = SamplingParams(max_tokens=3, temperature=0)
    streams = [backend.stream_chat(PROMPT, "demo-b", short), backend.stream_chat(PROMPT, "demo-b", GREEDY)]
    texts = [s.text() for s in streams]
    assert [s.completion.completion_tokens for s in streams] == [3, GREEDY.max_tokens]
    assert texts[1] == solo_answers["demo-b"][0]
    assert texts[1].startswith(texts[0])


def test_sampling_rows_stay_valid(backend):
    streams = [backend.stream_chat(PROMPT, name, SamplingParams(max_tokens=8, temperature=1.2, top_p=0.9, seed=i))
               for i, name in enumerate((BASE, "demo-a", "demo-a"))]
    for s in streams:
        s.text()
        # At temperature 1.2 a row may sample eos ("stop"); otherwise it runs to max_tokens.
        assert (s.completion.finish_reason, s.completion.completion_tokens <= 8) in (("length", True), ("stop", True))
        assert s.completion.finish_reason == "stop" or s.completion.completion_tokens == 8


def test_eos_stops_with_reason_stop(demo_model_dir, serving_adapters_dir):
    # A model whose every answer is eos at once: force it through the generation config's bias.
    b = LocalBackend(str(demo_model_dir.model), quantization="none", adapters_dir=serving_adapters_dir)
    try:
        eos = b.tokenizer.eos_token_id
        torch = __import__("torch")
        head = b._worker.model.lm_head
        bias = torch.zeros(head.out_features)
        bias[eos] = 1e4  # a bias, not a weight change: eos wins whatever the hidden state is
        head.bias = torch.nn.Parameter(bias, requires_grad=False)
        stream = b.stream_chat(PROMPT, BASE, GREEDY)
        assert stream.text() == ""
        assert stream.completion.finish_reason == "stop"
        assert stream.completion.completion_tokens == 0
    finally:
        b.close()


def test_cancel_ends_stream_early(backend):
    stream = backend.stream_chat(PROMPT, "demo-a", SamplingParams(max_tokens=64, temperature=0))
    got = []
    for delta in stream:
        got.append(delta)
        stream.cancel()
    assert stream.completion.finish_reason == "cancelled"
    assert stream.completion.completion_tokens < 64
    assert "".join(got) == stream.completion.text
    assert all(a.in_flight == 0 for a in backend.adapters.list())


def test_abandoned_stream_releases_its_lease(backend):
    stream = backend.stream_chat(PROMPT, "demo-b", SamplingParams(max_tokens=64, temperature=0))
    next(iter(stream))
    del stream  # the generator's finally cancels the generation
    deadline = time.time() + 10
    while any(a.in_flight for a in backend.adapters.list()) and time.time() < deadline:
        time.sleep(0.05)
    assert all(a.in_flight == 0 for a in backend.adapters.list())


def test_concurrent_requests_while_adapters_change(backend, solo_answers, serving_adapters_dir, production_at_base):
    """8 threads generate on fixed adapters while another loads an adapter and re-points production."""
    import shutil

    extra = serving_adapters_dir / "demo-a-copy"
    if not extra.exists():
        shutil.copytree(serving_adapters_dir / "demo-a", extra)
    names = [BASE, "demo-a", "demo-b", BASE, "demo-a", "demo-b", "demo-a", "demo-b"]
    errors, mismatches = [], []
    stop = threading.Event()

    def chat(name):
        try:
            for _ in range(3):
                stream = backend.stream_chat(PROMPT, name, GREEDY)
                text = stream.text()
                if text != solo_answers[name][0] or stream.completion.adapter != name:
                    mismatches.append((name, text))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    def churn():
        try:
            backend.load_adapter("demo-a-copy", extra)
            for target in ("demo-a", "demo-b", "demo-a-copy", BASE) * 2:
                backend.set_alias(PRODUCTION, target)
                stream = backend.stream_chat(PROMPT, PRODUCTION, GREEDY)
                text = stream.text()
                expected = solo_answers["demo-a" if target == "demo-a-copy" else target][0]
                if text != expected or stream.completion.adapter != target:
                    mismatches.append((PRODUCTION, target, text))
            backend.set_alias(PRODUCTION, BASE)
            backend.unload_adapter("demo-a-copy")
        except Exception as exc:
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=chat, args=(n,)) for n in names] + [threading.Thread(target=churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not mismatches, mismatches
    assert "demo-a-copy" not in backend.adapters.names()


def test_health_and_listing(backend):
    health = backend.health()
    assert health["ok"] is True and health["backend"] == "local"
    assert health["device"] == "cpu" and health["quantization"] == "none"
    assert set(health["adapters"]) >= {BASE, *DEMO_ADAPTERS}
    assert health["queue_depth"] == 0
    listed = {a.name: a for a in backend.list_adapters()}
    assert PRODUCTION in listed and listed[PRODUCTION].meta["alias_of"] == backend.resolve(PRODUCTION)
    assert listed["demo-a"].path is not None
    assert backend.model_path == str(backend.base_model)


def test_backend_satisfies_protocol(backend):
    from serving.backend import Backend

    assert isinstance(backend, Backend)


@pytest.mark.parametrize("text", ["héllo wörld ✓ 日本語 🎉"])
def test_multibyte_text_streams_whole_characters(backend, text):
    # Feed the row decoder a multi-byte string token by token, as the model would produce it.
    from serving.batching import GenerationRequest, _Row
    from serving.types import Completion

    request = GenerationRequest(prompt_ids=[1], adapter=BASE, max_tokens=64, temperature=0, top_p=1.0,
                                cancel=threading.Event(), completion=Completion())
    row = _Row(request, backend.tokenizer)
    for token in backend.tokenizer(text, add_special_tokens=False)["input_ids"]:
        row.add(token)
    row.close("length")
    items = list(request.stream())
    assert "".join(items) == text
    assert not any("\ufffd" in d for d in items)


def test_failed_batch_fails_only_its_requests(backend, solo_answers):
    # A request naming an adapter the model does not hold (bypassing the manager) makes peft raise
    # inside generate(); its stream gets a ServingError and the worker keeps serving.
    from serving.batching import GenerationRequest
    from serving.errors import ServingError
    from serving.types import Completion

    ghost = GenerationRequest(prompt_ids=[5, 6, 7], adapter="ghost", max_tokens=4, temperature=0, top_p=1.0,
                              cancel=threading.Event(), completion=Completion(adapter="ghost"))
    backend._worker.submit(ghost)
    with pytest.raises(ServingError):
        list(ghost.stream())
    assert ghost.completion.finish_reason == "error"
    assert backend.health()["ok"] is True
    assert backend.stream_chat(PROMPT, "demo-a", GREEDY).text() == solo_answers["demo-a"][0]


def test_from_settings_demo(demo_model_dir, tmp_path):
    import shutil

    from settings import Settings

    settings = Settings(demo=True, data_dir=tmp_path, max_new_tokens=8)
    # A copy of the session's demo model carries its version marker, so nothing is rebuilt.
    shutil.copytree(demo_model_dir.model, settings.demo_dir)
    shutil.copytree(demo_model_dir.adapters, settings.adapters_dir)
    b = LocalBackend.from_settings(settings)
    try:
        assert b.model_path == str(settings.demo_dir)
        assert b.max_new_tokens == 8
        assert set(b.load_all_adapters()) == set(DEMO_ADAPTERS)
        assert b.stream_chat(PROMPT, "demo-b", SamplingParams(temperature=0)).completion.adapter == "demo-b"
    finally:
        b.close()
