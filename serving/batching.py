"""The generation worker: one thread owns the model, batches waiting requests and streams each row back.

Requests of different adapters share a batch through peft's mixed-adapter ``generate(adapter_names=...)``.
Loading and dropping adapters run on the same thread between batches, so a batch always finishes on the
adapters it started with and no request thread ever changes the model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from serving.errors import AdapterRejected, BackendUnavailable, ServingError
from serving.stops import StopText
from serving.types import BASE, GREEDY_BELOW, Completion

log = logging.getLogger(__name__)

PEFT_BASE = "__base__"  # how peft's mixed-batch forward names "no adapter" for a row
_END = object()  # stream sentinel: the answer is complete


@dataclass
class GenerationRequest:
    """One prompt for the worker; the worker writes deltas to ``out`` and fills ``completion``."""

    prompt_ids: list[int]
    adapter: str  # concrete adapter name (aliases resolved), BASE for none
    max_tokens: int
    temperature: float
    top_p: float
    cancel: threading.Event
    completion: Completion
    stop_at_eos: bool = True  # the bench turns this off so every answer has the same length
    stop: tuple[str, ...] = ()  # stop strings: the answer is cut just before the first
    seed: int | None = None  # this row draws from its own generator (batch-mates cannot shift its draws)
    constraint: object | None = None  # a serving.types.TokenConstraint (structured output)
    on_done: Callable[[], None] | None = None  # releases the adapter lease; called exactly once
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.perf_counter)

    def stream(self):
        """Yield text deltas until the end; raises the ``ServingError`` the worker reported."""
        while True:
            item = self.out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def finish(self, reason: str | None, error: ServingError | None = None) -> None:
        c = self.completion
        if c.finish_reason is not None:
            return
        c.finish_reason = reason
        c.latency_s = time.perf_counter() - self.submitted
        try:
            if self.on_done is not None:
                self.on_done()
        finally:
            self.out.put(error if error is not None else _END)


class _Row:
    """Per-row decoding state: tokens so far, text already emitted, why it stopped."""

    def __init__(self, request: GenerationRequest, tokenizer):
        self.request = request
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.emitted = ""
        self.stop_reason: str | None = None  # set by the stopping criteria, acted on by the streamer
        self.closed = False
        # Incremental detokenizing, as transformers' TextStreamer (batch 1 only) and TGI do it: decode a
        # short window of recent tokens and emit what it adds, so each step costs O(1), not O(answer).
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into emitted text
        self.stops = StopText(request.stop) if request.stop else None
        self.keep_last = False  # a constraint ended the row on a token that belongs to the answer

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def add(self, token: int) -> None:
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        # A multi-byte character split over tokens decodes to U+FFFD until its last byte arrives: hold it.
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._emit(after[len(before):])
            self._prefix, self._read = self._read, len(self.tokens)

    def _emit(self, delta: str) -> None:
        if self.stops is not None:
            delta = self.stops.feed(delta)
            if self.stops.hit:
                self.stop_reason = "stop"
        self._emit_text(delta)

    def _emit_text(self, delta: str) -> None:
        if delta:
            c = self.request.completion
            if c.first_token_s is None:
                c.first_token_s = time.perf_counter() - self.request.submitted
            self.emitted += delta
            self.request.out.put(delta)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        # Flush what was held back (an answer may really end in an incomplete character).
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        self._emit(after[len(before):] if after.startswith(before) else "")
        if self.stops is not None:
            self._emit_text(self.stops.flush())
            if self.stops.hit:
                reason = "stop"
        c = self.request.completion
        c.text = self.emitted
        c.completion_tokens = len(self.tokens)
        self.request.finish(reason)


class _Hooks:
    """The per-row streamer, stopping criteria and sampling processor of one ``generate`` call."""

    def __init__(self, rows: list[_Row], eos_ids: set[int]):
        self.rows = rows
        self.eos_ids = eos_ids
        self.prompt_seen = False
        self._temps = self._top_p = self._greedy = None  # per-row tensors, built on the first step
        self._seeded: dict = {}

    # StoppingCriteria: called with the new token already appended, before the streamer sees it.
    def stopping(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.closed or row.stop_reason is not None:
                done[i] = True
                continue
            constraint = row.request.constraint
            if constraint is not None and last[i] not in self.eos_ids:
                constraint.accept(last[i])
            if row.request.cancel.is_set():
                row.stop_reason = "cancelled"
            elif constraint is not None and constraint.is_terminated():
                row.stop_reason, row.keep_last = "stop", last[i] not in self.eos_ids
            elif row.request.stop_at_eos and last[i] in self.eos_ids:
                row.stop_reason = "stop"
            elif len(row.tokens) + 1 >= row.request.max_tokens:
                row.stop_reason = "length"
            done[i] = row.stop_reason is not None
        return done

    # BaseStreamer.put: first the prompt batch, then one token per row per step.
    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()
        for row, token in zip(self.rows, tokens, strict=True):
            if row.closed:
                continue
            reason = row.stop_reason
            # The eos token and a token sampled after a cancel are not part of the answer.
            if reason not in ("stop", "cancelled") or row.keep_last:
                row.add(token)
                reason = row.stop_reason  # a stop string may have ended it just now
            if reason is not None:
                row.close(reason)

    def end(self) -> None:
        for row in self.rows:
            row.close(row.stop_reason or "length")

    # LogitsProcessor: each row's own temperature and top_p; greedy rows keep only their argmax, so
    # generate()'s multinomial draw picks it with probability 1 (same answer as alone, no RNG used).
    def sampling(self, input_ids, scores):
        import torch

        if self._temps is None:
            temps = [r.request.temperature for r in self.rows]
            self._greedy = torch.tensor([t < GREEDY_BELOW for t in temps], device=scores.device)
            self._temps = torch.tensor([t if t > 0 else 1.0 for t in temps], device=scores.device)[:, None]
            self._top_p = torch.tensor([r.request.top_p for r in self.rows], device=scores.device)[:, None]
            self._seeded = {i: torch.Generator().manual_seed(r.request.seed)
                            for i, r in enumerate(self.rows) if r.request.seed is not None}
        for i, row in enumerate(self.rows):  # structured output: the grammar's mask, before sampling
            if row.request.constraint is not None and not row.closed:
                scores[i] = row.request.constraint.mask(scores[i])
        out = scores / self._temps
        if bool((self._top_p < 1).any()):
            sorted_logits, order = torch.sort(out, descending=True, dim=-1)
            probs = torch.softmax(sorted_logits, dim=-1)
            drop = (probs.cumsum(dim=-1) - probs) >= self._top_p  # keep the token that crosses top_p
            out = out.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
        if bool(self._greedy.any()):
            onehot = torch.full_like(scores, float("-inf"))
            onehot.scatter_(1, scores.argmax(dim=-1, keepdim=True), 0.0)
            out = torch.where(self._greedy[:, None], onehot, out)
        for i, gen in self._seeded.items():  # seeded rows draw here, from their own generator
            if not bool(self._greedy[i]):
                token = torch.multinomial(torch.softmax(out[i].float().cpu(), dim=-1), 1, generator=gen)
                out[i] = float("-inf")
                out[i, token.item()] = 0.0
        return out


def _wrap(hooks: _Hooks):
    """Adapt ``_Hooks`` to the transformers base classes generate() expects."""
    from transformers import LogitsProcessor, StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    class RowStreamer(BaseStreamer):
        def put(self, value):
            hooks.put(value)

        def end(self):
            hooks.end()

    class RowStopping(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return hooks.stopping(input_ids, scores, **kwargs)

    class RowSampling(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return hooks.sampling(input_ids, scores)

    return RowStreamer(), RowStopping(), RowSampling()


@dataclass
class _Control:
    fn: Callable[[], object]
    future: Future


class GenerationWorker:
    """Owns ``model`` on one thread; ``submit`` requests, ``call`` model changes between batches."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 8, batch_wait_ms: float = 5.0):
        self.model = model  # becomes a PeftModel when the first adapter is loaded
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._pending_controls: list[_Control] = []
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {e for e in [*eos_list, tokenizer.eos_token_id] if e is not None}
        self.batches = 0  # batches run, for tests and the bench

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker; requests still queued fail with ``BackendUnavailable``."""
        self._stopped.set()
        self._queue.put(None)  # wake the worker
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._fail_queued()

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, GenerationRequest):
                item.finish("error", BackendUnavailable("the server is shutting down"))
            elif isinstance(item, _Control):
                item.future.cancel()
        for control in self._pending_controls:
            control.future.cancel()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # --- called from other threads --------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        if self._stopped.is_set():
            raise BackendUnavailable("the generation worker is stopped")
        self._queue.put(request)

    def call(self, fn: Callable[[], object], timeout_s: float | None = None):
        """Run ``fn`` on the worker thread between batches and return its result (or raise its error)."""
        if self._stopped.is_set():
            raise BackendUnavailable("the generation worker is stopped")
        control = _Control(fn, Future())
        self._queue.put(control)
        return control.future.result(timeout_s)

    def load_adapter(self, name: str, path: Path) -> None:
        self.call(lambda: self._load_adapter(name, path))

    def unload_adapter(self, name: str) -> None:
        self.call(lambda: self._unload_adapter(name))

    # --- worker thread --------------------------------------------------------------------------
    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        except Exception as exc:
            # The directory passed our checks but peft still refused it; drop any half-added layers.
            if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                self.model.delete_adapter(name)
            raise AdapterRejected(f"adapter {name!r} refused: peft could not load it ({type(exc).__name__}: {exc})") from exc
        self.model.eval()

    def _unload_adapter(self, name: str) -> None:
        self.model.delete_adapter(name)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._run_controls()
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                continue
            if isinstance(item, _Control):
                self._pending_controls.append(item)
                continue
            batch = self._gather(item)
            try:
                self._generate(batch)
            except Exception as exc:  # one failed batch must not take the worker down
                log.exception("generation batch of %d failed", len(batch))
                error = exc if isinstance(exc, ServingError) else BackendUnavailable(f"generation failed: {type(exc).__name__}")
                for request in batch:
                    request.finish("error", error)
            finally:
                for request in batch:  # a row the hooks never closed still gets its end
                    if request.completion.finish_reason is None:
                        request.finish("error", BackendUnavailable("generation ended without an answer"))
        self._run_controls()

    def _run_controls(self) -> None:
        controls, self._pending_controls = self._pending_controls, []
        for control in controls:
            if not control.future.set_running_or_notify_cancel():
                continue
            try:
                control.future.set_result(control.fn())
            except BaseException as exc:
                control.future.set_exception(exc)

    def _gather(self, first: GenerationRequest) -> list[GenerationRequest]:
        batch = [first]
        deadline = time.perf_counter() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                break
            if isinstance(item, _Control):
                self._pending_controls.append(item)  # applied after this batch
            else:
                batch.append(item)
        return batch

    def _generate(self, batch: list[GenerationRequest]) -> None:
        import torch
        from peft import PeftModel
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        live = [r for r in batch if not r.cancel.is_set()]
        for r in batch:
            if r.cancel.is_set():
                r.completion.text = ""
                r.finish("cancelled")
        if not live:
            return
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in live)
        ids = torch.full((len(live), width), pad, dtype=torch.long)
        mask = torch.zeros((len(live), width), dtype=torch.long)
        for i, r in enumerate(live):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
        device = getattr(self.model, "device", None) or next(self.model.parameters()).device
        hooks = _Hooks([_Row(r, self.tokenizer) for r in live], self.eos_ids)
        streamer, stopping, sampling = _wrap(hooks)
        # eos handling lives in our per-row criteria (the bench can switch it off per row), so
        # generate() gets no eos id of its own: [] rather than None, which it would fill from the model.
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in live),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            pad_token_id=pad,
            eos_token_id=[],
        )
        kwargs = {}
        if isinstance(self.model, PeftModel):
            kwargs["adapter_names"] = [PEFT_BASE if r.adapter == BASE else r.adapter for r in live]
        elif any(r.adapter != BASE for r in live):
            raise BackendUnavailable("an adapter was requested but none is loaded in the model")
        self.batches += 1
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([sampling]),
                stopping_criteria=StoppingCriteriaList([stopping]),
                streamer=streamer,
                **kwargs,
            )
