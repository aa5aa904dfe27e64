"""Continuous batching: rows join and leave at every step, and each row's answer is the one it gets alone.

Uses a random-weight Qwen2 model (tests/serving/conftest.py) whose answers run to max_tokens, so batches
are long and joins really land mid-generation.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from serving.types import BASE, PRODUCTION, SamplingParams

PROMPTS = ["Hello", "Tell me about the sea, the sky and the long road home.", "Why?",
           "What is a database and how does it store data?", "One two three", "Good night, moon."]


class Reader:
    """Consumes a stream on its own thread, noting when each delta arrived."""

    def __init__(self, stream):
        self.stream = stream
        self.deltas: list[str] = []
        self.times: list[float] = []
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for delta in self.stream:
                self.times.append(time.perf_counter())
                self.deltas.append(delta)
        except BaseException as exc:  # noqa: BLE001 - asserted by the test
            self.error = exc
        self.done_at = time.perf_counter()

    def wait_deltas(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while len(self.deltas) < n and self.done_at is None and time.time() < deadline:
            time.sleep(0.002)

    def join(self, timeout: float = 120) -> str:
        self.thread.join(timeout)
        assert self.error is None, self.error
        return "".join(self.deltas)


def ask(backend, i: int, adapter: str, max_tokens: int, **kw):
    params = SamplingParams(max_tokens=max_tokens, temperature=0, **kw)
    return backend.stream_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], adapter, params)


# (prompt, adapter, max_tokens): different prompt lengths, adapters and answer lengths.
SPECS = [(0, BASE, 40), (1, "qa", 20), (2, "qb", 50), (3, BASE, 10), (4, "qa", 45), (5, "qb", 30), (1, BASE, 25)]


@pytest.fixture(scope="module")
def solo(qwen_backend) -> dict[tuple, tuple[str, int]]:
    out = {}
    for spec in SPECS:
        stream = ask(qwen_backend, *spec)
        out[spec] = (stream.text(), stream.completion.completion_tokens)
    return out


def test_random_model_answers_run_to_max_tokens(solo):
    for (_, _, max_tokens), (text, n) in solo.items():
        assert n == max_tokens and text


@pytest.mark.parametrize("adapter", [BASE, "qa"])
def test_worker_answers_as_transformers_generate(qwen_dirs, solo, adapter):
    """The worker's own decode loop against the reference: transformers' ``generate`` (greedy) on a fresh copy
    of the model and adapter. Comparing the worker with itself (``solo``) cannot catch a cache the model never
    reads: on transformers 5.23, which takes it as ``past_key_values``, every row was garbage alike."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.chat_format import render_prompt

    model_dir, adapters_dir = qwen_dirs
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter != BASE:
        model = PeftModel.from_pretrained(model, adapters_dir / adapter)
    for spec in (s for s in SPECS if s[1] == adapter):
        messages = [{"role": "user", "content": PROMPTS[spec[0] % len(PROMPTS)]}]
        ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=spec[2], do_sample=False)
        assert solo[spec][0] == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True), spec


def test_prefill_refuses_a_model_that_ignores_the_cache(qwen_dirs):
    """A model that does not write into the cache it is given (a kwarg it does not know is swallowed by its
    ``**kwargs``) fails loudly at prefill instead of serving garbage."""
    import torch
    from transformers import AutoModelForCausalLM

    from serving.kv_batch import RunningBatch

    class Forgetful(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, cache=None, **kwargs):  # takes the cache by name, then drops it
            return self.model(**kwargs)

    model = Forgetful(AutoModelForCausalLM.from_pretrained(qwen_dirs[0]))
    with pytest.raises(RuntimeError, match="did not fill the KV cache"):
        RunningBatch.prefill(model, [[1, 2, 3]], pad_id=0, device="cpu")


def test_cache_kwarg_follows_the_models_signature():
    from serving.kv_batch import _cache_kwarg

    class New:
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    assert (_cache_kwarg(New), _cache_kwarg(Old)) == ("cache", "past_key_values")


def test_rows_joining_and_leaving_mid_generation_equal_solo(qwen_backend, solo):
    worker = qwen_backend._worker
    readers, joined_running = [], []
    for k, spec in enumerate(SPECS):
        if readers:
            readers[-1].wait_deltas(4)  # the previous request is mid-answer
        joined_running.append(worker.running)
        readers.append(Reader(ask(qwen_backend, *spec)))
        if k == 2:  # one row that leaves early by cancel, while the others go on
            victim = Reader(ask(qwen_backend, 2, "qa", 120))
            victim.wait_deltas(3)
            victim.stream.cancel()
    for spec, reader in zip(SPECS, readers, strict=True):
        text = reader.join()
        assert text == solo[spec][0], spec
        assert reader.stream.completion.completion_tokens == spec[2]
        assert reader.stream.completion.finish_reason == "length"
    victim.join()
    assert victim.stream.completion.finish_reason == "cancelled"
    assert sum(1 for n in joined_running if n > 0) >= 4, joined_running  # most joined a running batch
    assert all(a.in_flight == 0 for a in qwen_backend.adapters.list())


def test_new_request_gets_first_token_before_a_long_batch_finishes(qwen_backend):
    longs = [Reader(ask(qwen_backend, i, ("qa", "qb", BASE)[i % 3], 150)) for i in range(4)]
    for r in longs:
        r.wait_deltas(2)
    submitted = time.perf_counter()
    short = Reader(ask(qwen_backend, 5, "qa", 5))
    short.join()
    for r in longs:
        r.join()
    assert short.times, "the short request got no token"
    first_long_end = min(r.done_at for r in longs)
    assert short.times[0] < first_long_end
    assert short.done_at < first_long_end  # it was not held back until the long rows ended
    # Within a handful of steps of the long rows' pace, not after their 150 tokens.
    step = (first_long_end - submitted) / 140
    assert short.times[0] - submitted < 30 * step + 1.0


def test_hot_swap_under_continuous_traffic_loses_nothing(qwen_backend, qwen_dirs, solo):
    """Chats start and end all the time while an adapter is loaded, aliased and unloaded between steps."""
    _, adapters = qwen_dirs
    copy = adapters / "qa-copy"
    if not copy.exists():
        shutil.copytree(adapters / "qa", copy)
    worker = qwen_backend._worker
    stop = threading.Event()
    errors, results = [], []

    def traffic(k: int):
        spec = SPECS[k % len(SPECS)]
        try:
            while not stop.is_set():
                stream = ask(qwen_backend, *spec)
                results.append((spec, stream.text(), stream.completion.finish_reason))
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # staggered, so rows start and end at different steps
    swaps_while_running = 0
    try:
        for _ in range(2):
            swaps_while_running += worker.running > 0
            qwen_backend.load_adapter("qa-copy", copy)
            qwen_backend.set_alias(PRODUCTION, "qa-copy")
            answer = ask(qwen_backend, 1, PRODUCTION, 20)
            assert answer.text() == solo[(1, "qa", 20)][0]  # the copy answers as the original
            qwen_backend.set_alias(PRODUCTION, BASE)
            swaps_while_running += worker.running > 0
            qwen_backend.unload_adapter("qa-copy")
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert swaps_while_running >= 2
    assert len(results) >= 4
    for spec, text, reason in results:
        assert (text, reason) == (solo[spec][0], "length"), spec
    assert "qa-copy" not in qwen_backend.adapters.names()
    assert all(a.in_flight == 0 for a in qwen_backend.adapters.list())


def test_seed_reproducible_whatever_the_batch_mates(qwen_backend):
    def sampled(seed, mates=0):
        params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=seed)
        others = [Reader(qwen_backend.stream_chat([{"role": "user", "content": PROMPTS[j]}], "qb",
                                                  SamplingParams(max_tokens=30, temperature=1.0, seed=None)))
                  for j in range(mates)]
        for r in others:
            r.wait_deltas(1)
        text = qwen_backend.stream_chat([{"role": "user", "content": "Hello"}], "qa", params).text()
        for r in others:
            r.join()
        return text

    alone = sampled(1234)
    assert sampled(1234) == alone
    assert sampled(1234, mates=3) == alone
    assert sampled(99) != alone


def test_unseeded_sampling_differs_between_requests(qwen_backend):
    params = SamplingParams(max_tokens=20, temperature=1.0)
    texts = {qwen_backend.stream_chat([{"role": "user", "content": "Hello"}], BASE, params).text() for _ in range(3)}
    assert len(texts) > 1


class DigitsThenStop:
    """A tiny TokenConstraint: only tokens that decode to digits, ended after 3 tokens."""

    def __init__(self, tokenizer):
        self.allowed = [t for t in range(len(tokenizer)) if tokenizer.decode([t]).isdigit()]
        self.accepted: list[int] = []

    def mask(self, scores):
        import torch

        out = torch.full_like(scores, float("-inf"))
        out[self.allowed] = scores[self.allowed]
        return out

    def accept(self, token_id: int) -> None:
        assert token_id in self.allowed
        self.accepted.append(token_id)

    def is_terminated(self) -> bool:
        return len(self.accepted) >= 3


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constraint_masks_and_ends_the_row(qwen_backend, solo, temperature):
    constraint = DigitsThenStop(qwen_backend.tokenizer)
    assert constraint.allowed
    # Next to an unconstrained greedy row, which must stay what it is alone.
    mate = Reader(ask(qwen_backend, 0, BASE, 40))
    mate.wait_deltas(1)
    params = SamplingParams(max_tokens=50, temperature=temperature, constraint=constraint)
    stream = qwen_backend.stream_chat([{"role": "user", "content": "Hello"}], "qa", params)
    text = stream.text()
    assert text.isdigit() and stream.completion.finish_reason == "stop"
    assert stream.completion.completion_tokens == 3 == len(constraint.accepted)
    assert mate.join() == solo[(0, BASE, 40)][0]


def test_max_batch_size_defaults():
    from serving.batching import default_max_batch_size

    assert default_max_batch_size("cpu") == 8
    assert default_max_batch_size("cuda") == 32


def test_prefill_budget_splits_a_burst_over_steps(qwen_backend):
    """A burst of waiting prompts is admitted as far as the step's token budget goes; one is always admitted."""
    import torch

    from serving.batching import GenerationRequest, GenerationWorker
    from serving.types import Completion

    # A worker of its own, driven step by step on this thread (the model is only read).
    worker = GenerationWorker(qwen_backend._worker.model, qwen_backend.tokenizer, max_batch_size=8,
                              prefill_tokens_per_step=25, admit_every_steps=1)
    prompt = list(range(10, 20))  # 10 tokens: two fit the budget of 25, a third does not

    def request(ids):
        return GenerationRequest(prompt_ids=ids, adapter=BASE, max_tokens=50, temperature=0, top_p=1.0,
                                 cancel=threading.Event(), completion=Completion())

    worker._waiting.extend(request(prompt) for _ in range(5))
    with torch.inference_mode():
        worker._admit()
        assert (worker.running, len(worker._waiting)) == (2, 3)
        worker._decode_step()
        worker._admit()
        assert (worker.running, len(worker._waiting)) == (4, 1)
        worker._waiting.appendleft(request(list(range(10, 70))))  # 60 tokens, over the budget on its own
        worker._admit()
        assert (worker.running, len(worker._waiting)) == (5, 1)
        worker.max_batch_size = 5
        worker._admit()  # no room: nothing joins
        assert (worker.running, len(worker._waiting)) == (5, 1)
    assert worker._batch.rows == 5


def _request(ids, max_tokens, adapter=BASE):
    from serving.batching import GenerationRequest
    from serving.types import Completion

    return GenerationRequest(prompt_ids=ids, adapter=adapter, max_tokens=max_tokens, temperature=0, top_p=1.0,
                             cancel=threading.Event(), completion=Completion())


def _drive(worker, arrivals: dict[int, list]) -> None:
    """Run ``worker``'s loop on this thread; ``arrivals[k]`` join the waiting line before step k."""
    import torch

    step = 0
    with torch.inference_mode():
        while arrivals or worker.running or worker._waiting:
            worker._waiting.extend(arrivals.pop(step, []))
            worker._admit()
            if worker.running:
                worker._decode_step()
            step += 1


def test_arrivals_gather_and_join_together_every_n_steps(qwen_backend):
    """While rows decode, requests arriving over several steps are prefilled together, each as it is alone."""
    import torch

    from serving.batching import GenerationWorker

    def worker(every):  # its own worker, driven on this thread (the model is only read)
        return GenerationWorker(qwen_backend._worker.model, qwen_backend.tokenizer, max_batch_size=8,
                                admit_every_steps=every)

    tok = qwen_backend.tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    adapters = ["qa", BASE, "qb", "qa", "qb", BASE]
    solo = []
    for i, ids in enumerate(prompts):
        alone = _request(ids, 12, adapters[i])
        _drive(worker(1), {0: [alone]})
        solo.append(alone.completion.text)

    w = worker(3)
    first = [_request(prompts[i], 12, adapters[i]) for i in range(3)]
    late = [_request(prompts[i], 12, adapters[i]) for i in range(3, 5)]
    w._waiting.extend(first)
    with torch.inference_mode():
        w._admit()  # nothing runs: admitted at once
        assert (w.running, w.prefills) == (3, 1)
        w._waiting.append(late[0])
        w._admit()
        w._decode_step()
        w._waiting.append(late[1])
        for _ in range(2):
            w._admit()  # 1 and 2 steps since the last admission, 2 waiting < 3 running: they wait
            assert (w.running, len(w._waiting), w.prefills) == (3, 2, 1)
            w._decode_step()
        w._admit()  # the third step: both join in one prefill
        assert (w.running, len(w._waiting), w.prefills) == (5, 0, 2)
        burst = [_request(prompts[5], 12, adapters[5]) for _ in range(5)]
        w._waiting.extend(burst)  # as many waiting as running: admitted at once, whatever the step count
        w._decode_step()
        w._admit()
        assert (w.running, len(w._waiting), w.prefills) == (8, 2, 3)  # as far as the batch has room
    _drive(w, {})
    for i, r in enumerate(first + late):
        assert (r.completion.text, r.completion.finish_reason) == (solo[i], "length"), i
    assert all(r.completion.text == solo[5] for r in burst)


def test_rows_of_one_adapter_run_on_the_active_adapter(qwen_backend, solo):
    """A step whose rows share an adapter runs peft's plain LoRA forward (same logits), others the mixed one."""
    import torch

    from serving.batching import GenerationWorker, _Row
    from serving.kv_batch import RunningBatch

    w = GenerationWorker(qwen_backend._worker.model, qwen_backend.tokenizer)
    tok = qwen_backend.tokenizer
    rows = [_Row(_request(tok(p, add_special_tokens=False)["input_ids"], 5, "qb"), tok) for p in PROMPTS[:3]]
    assert w._adapter_names(rows) is None and w.model.active_adapter == "qb"
    with torch.inference_mode():
        prompts = [r.request.prompt_ids for r in rows]
        _, plain = RunningBatch.prefill(w.model, prompts, tok.pad_token_id, w.device, None)
        _, mixed = RunningBatch.prefill(w.model, prompts, tok.pad_token_id, w.device, ["qb"] * 3)
        assert torch.equal(plain, mixed)
        _, base = RunningBatch.prefill(w.model, prompts, tok.pad_token_id, w.device, ["__base__"] * 3)
        assert not torch.equal(plain, base)
    rows.append(_Row(_request([5, 6], 5, BASE), tok))
    assert w._adapter_names(rows) == ["qb", "qb", "qb", "__base__"]
    assert w._adapter_names(rows[3:]) == ["__base__"]  # base rows skip LoRA through adapter_names
    # Through the backend: uniform batches of one adapter, then of another, each answer as alone.
    for adapter in ("qa", "qb", "qa"):
        specs = [s for s in SPECS if s[1] == adapter]
        readers = [Reader(ask(qwen_backend, *spec)) for spec in specs]
        for spec, reader in zip(specs, readers, strict=True):
            assert reader.join() == solo[spec][0], spec


def test_running_worker_keeps_the_gil_switch_interval_short(qwen_backend):
    """Each torch op of the worker gives up the GIL; the HTTP threads must hand it back within 0.5 ms."""
    import sys

    from serving.batching import GIL_SWITCH_INTERVAL_S

    assert qwen_backend._worker.alive
    assert sys.getswitchinterval() <= GIL_SWITCH_INTERVAL_S
