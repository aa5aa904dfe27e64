"""The generation worker: one thread owns the model and schedules every decode step (continuous batching).

At each step the worker drops the rows that finished, were cancelled or hit a stop, admits waiting
requests (every ``admit_every_steps`` steps while rows decode, at once when none do; prefilled together
within a token budget, then joined to the running batch: see ``serving/kv_batch.py``) and runs one
decode step for all rows. A new chat therefore starts within a step or two, whatever else is generating.
Rows of different adapters share each step through peft's mixed-adapter forward (``adapter_names``);
a step whose rows all want one adapter runs it as peft's active adapter. Adapter loads and unloads run
on this same thread between steps, so no forward ever sees a half-loaded adapter and no request thread
changes the model.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from serving.errors import AdapterRejected, BackendUnavailable, ServingError
from serving.kv_batch import RunningBatch
from serving.sampling import RowSampler, choose
from serving.stop_strings import StopStrings
from serving.types import BASE, Completion, TokenConstraint

log = logging.getLogger(__name__)

PEFT_BASE = "__base__"  # how peft's mixed-batch forward names "no adapter" for a row
_END = object()  # stream sentinel: the answer is complete
DEFAULT_BATCH_CPU = 8  # a CPU step costs about linearly more per row beyond a few rows
DEFAULT_BATCH_GPU = 32  # a GPU step costs about the same for 1 or 32 rows of a small model
GIL_SWITCH_INTERVAL_S = 0.0005  # see GenerationWorker.start


def default_max_batch_size(device_type: str) -> int:
    """The ``max_batch_size`` that suits the device when the settings leave it unset."""
    return DEFAULT_BATCH_GPU if device_type == "cuda" else DEFAULT_BATCH_CPU


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
    stop: tuple[str, ...] = ()  # the answer ends just before the first of these
    seed: int | None = None  # this request's own random stream
    constraint: TokenConstraint | None = None  # structured output: masks scores, may end the row
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
    """Per-row decoding state: tokens so far, text already emitted, the token to feed next."""

    def __init__(self, request: GenerationRequest, tokenizer):
        self.request = request
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.emitted = ""
        self.closed = False
        self.next_token: int | None = None  # sampled, not yet fed to the model
        self.stops = StopStrings(request.stop)
        self.sampler: RowSampler | None = None  # built on the worker thread (it imports torch)
        # Incremental detokenizing, as transformers' TextStreamer (batch 1 only) and TGI do it: decode a
        # short window of recent tokens and emit what it adds, so each step costs O(1), not O(answer).
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text

    @property
    def adapter_name(self) -> str:
        return PEFT_BASE if self.request.adapter == BASE else self.request.adapter

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def add(self, token: int) -> None:
        """Append an answer token and stream the text it completes (a stop string ends the text)."""
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        # A multi-byte character split over tokens decodes to U+FFFD until its last byte arrives: hold it.
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._emit(self.stops.feed(after[len(before):]))
            self._prefix, self._read = self._read, len(self.tokens)

    @property
    def stopped(self) -> bool:
        return self.stops.hit

    def _emit(self, delta: str) -> None:
        if delta:
            c = self.request.completion
            if c.first_token_s is None:
                c.first_token_s = time.perf_counter() - self.request.submitted
            self.emitted += delta
            self.request.out.put(delta)

    def take(self, token: int, eos_ids: set[int]) -> str | None:
        """Handle the token sampled for this row; returns the finish reason once the row is done."""
        constraint = self.request.constraint
        if token < 0:  # every token was masked out
            return "stop" if constraint is not None else "error"
        if constraint is not None:
            constraint.accept(token)
        if self.request.stop_at_eos and token in eos_ids:
            return "stop"  # the eos token is not part of the answer
        self.add(token)
        self.next_token = token
        if self.stopped or (constraint is not None and constraint.is_terminated()):
            return "stop"
        if len(self.tokens) >= self.request.max_tokens:
            return "length"
        return None

    def close(self, reason: str, error: ServingError | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        # Flush what was held back (an answer may really end in an incomplete character, or in the
        # start of a stop string that never completed).
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        self._emit(self.stops.feed(after[len(before):] if after.startswith(before) else ""))
        if self.stops.hit and reason == "length":
            reason = "stop"
        if reason not in ("cancelled", "error"):
            self._emit(self.stops.flush())
        c = self.request.completion
        c.text = self.emitted
        c.completion_tokens = len(self.tokens)
        self.request.finish(reason, error)


@dataclass
class _Control:
    fn: Callable[[], object]
    future: Future


class GenerationWorker:
    """Owns ``model`` on one thread; ``submit`` requests, ``call`` model changes between decode steps."""

    def __init__(self, model, tokenizer, *, max_batch_size: int | None = None, prefill_tokens_per_step: int = 512,
                 admit_every_steps: int = 2):
        self.model = model  # becomes a PeftModel when the first adapter is loaded
        self.tokenizer = tokenizer
        device = getattr(model, "device", None) or next(model.parameters()).device
        self.device = device
        self.max_batch_size = max_batch_size or default_max_batch_size(device.type)
        # A step admits waiting prompts until their tokens reach this; a longer prompt is admitted alone.
        self.prefill_tokens_per_step = prefill_tokens_per_step
        # While rows decode, waiting requests are admitted together every this many steps (see _admission_due).
        self.admit_every_steps = admit_every_steps
        self._since_admit = 0  # decode steps run since the last admission
        self._queue: queue.Queue = queue.Queue()
        self._waiting: deque[GenerationRequest] = deque()
        self._pending_controls: list[_Control] = []
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._rows: list[_Row] = []
        self._batch: RunningBatch | None = None
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos_list = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {e for e in [*eos_list, tokenizer.eos_token_id] if e is not None}
        self.steps = 0  # decode steps run, for tests and the bench
        self.prefills = 0  # prefill passes run (one per admitted group)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        # Every torch op this thread runs releases the GIL and must win it back from the HTTP threads; by
        # default a busy thread keeps it up to 5 ms, so under load a decode step of a few hundred small ops
        # waited mostly for the GIL (``bench/load.py``: half the step time). A shorter interval bounds that
        # wait; the request threads only lose some throughput of pure-Python work.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the worker; requests still queued or running fail with ``BackendUnavailable``."""
        self._stopped.set()
        self._queue.put(None)  # wake the worker
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._fail_queued()

    def _fail_queued(self) -> None:
        shutting = BackendUnavailable("the server is shutting down")
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, GenerationRequest):
                self._waiting.append(item)
            elif isinstance(item, _Control):
                item.future.cancel()
        while self._waiting:
            self._waiting.popleft().finish("error", shutting)
        if self._thread is None or not self._thread.is_alive():
            for row in self._rows:
                row.close("error", shutting)
            self._rows, self._batch = [], None
        for control in self._pending_controls:
            control.future.cancel()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a place in the running batch."""
        return self._queue.qsize() + len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    # --- called from other threads --------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> None:
        if self._stopped.is_set():
            raise BackendUnavailable("the generation worker is stopped")
        self._queue.put(request)

    def call(self, fn: Callable[[], object], timeout_s: float | None = None):
        """Run ``fn`` on the worker thread between decode steps and return its result (or raise its error)."""
        if self._stopped.is_set():
            raise BackendUnavailable("the generation worker is stopped")
        control = _Control(fn, Future())
        self._queue.put(control)
        return control.future.result(timeout_s)

    def load_adapter(self, name: str, path: Path) -> None:
        self.call(lambda: self._load_adapter(name, path))

    def unload_adapter(self, name: str) -> None:
        self.call(lambda: self._unload_adapter(name))

    # --- worker thread: model changes -----------------------------------------------------------
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

    def _run_controls(self) -> None:
        controls, self._pending_controls = self._pending_controls, []
        for control in controls:
            if not control.future.set_running_or_notify_cancel():
                continue
            try:
                control.future.set_result(control.fn())
            except BaseException as exc:
                control.future.set_exception(exc)

    # --- worker thread: scheduling --------------------------------------------------------------
    def _run(self) -> None:
        import torch

        while not self._stopped.is_set():
            self._take_queue(block=not self._rows and not self._waiting)
            self._run_controls()  # between steps: the running rows' adapters stay loaded (leases)
            self._drop_cancelled()
            with torch.inference_mode():
                self._admit()
                if self._rows:
                    self._decode_step()
        self._run_controls()
        shutting = BackendUnavailable("the server is shutting down")
        for row in self._rows:
            row.close("error", shutting)
        self._rows, self._batch = [], None

    def _take_queue(self, block: bool) -> None:
        """Move everything queued into the waiting line and the pending controls."""
        try:
            item = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, _Control):
                self._pending_controls.append(item)
            elif isinstance(item, GenerationRequest):
                self._waiting.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _drop_cancelled(self) -> None:
        for request in [r for r in self._waiting if r.cancel.is_set()]:
            self._waiting.remove(request)
            request.finish("cancelled")
        gone = [i for i, row in enumerate(self._rows) if row.request.cancel.is_set()]
        if gone:
            for i in gone:
                self._rows[i].close("cancelled")
            self._keep([i for i in range(len(self._rows)) if i not in set(gone)])

    def _keep(self, indices: list[int]) -> None:
        self._rows = [self._rows[i] for i in indices]
        if not self._rows:
            self._batch = None
        elif self._batch is not None and len(indices) < self._batch.rows:
            self._batch.keep(indices)

    def _adapter_names(self, rows: list[_Row]) -> list[str] | None:
        """peft's ``adapter_names`` for a forward over ``rows``; None when the active adapter serves them all.

        The mixed-batch forward costs forward hooks plus a gather and a scatter per LoRA layer and adapter;
        when every row wants the same adapter, making it the active one (here, on the thread that owns the
        model, between forwards) runs peft's plain LoRA forward: a third less per decode step on the demo
        model, same logits. Base-only rows keep ``adapter_names``, which skips LoRA for them.
        """
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            names = {row.adapter_name for row in rows}
            if len(names) == 1 and PEFT_BASE not in names:
                name = names.pop()
                if self.model.active_adapter != name:
                    self.model.set_adapter(name, inference_mode=True)
                return None
            return [row.adapter_name for row in rows]
        if any(row.request.adapter != BASE for row in rows):
            raise BackendUnavailable("an adapter was requested but none is loaded in the model")
        return None

    def _admission_due(self) -> bool:
        """Whether this step admits the waiting requests, or lets them gather for a step or two more.

        Each admission costs a prefill forward and a cache copy whatever its size, so arrivals are
        gathered as TGI's router does (``waiting_served_ratio``, ``max_waiting_tokens``): at once when
        nothing runs or the waiting line is as long as the running batch, else every ``admit_every_steps``
        decode steps (1: every step), which bounds the extra wait of a new chat to that many steps.
        Under ``bench/load.py`` (32 users, answers of 8 tokens, demo model on 2 CPU threads, quiet
        machine, 2026-12-02) admitting at every step gave 0.42x / 0.43x static's TTFT p50 / p95 and 0.83x
        its tokens/s, every 2 steps 0.48x / 0.49x and 1.00x: a prefill forward per step costs about what a
        decode step does. Putting the prefill into the decode forward did not pay here (``kv_batch.py``).
        """
        if not self._waiting or len(self._rows) >= self.max_batch_size:
            return False
        return (not self._rows or len(self._waiting) >= len(self._rows)
                or self.admit_every_steps <= 1 or self._since_admit >= self.admit_every_steps)

    def _admit(self) -> None:
        """Prefill waiting requests that fit (batch room, token budget) and join them to the running batch."""
        if not self._admission_due():
            return
        self._since_admit = 0
        room = self.max_batch_size - len(self._rows)
        group: list[GenerationRequest] = []
        tokens = 0
        while self._waiting and len(group) < room:
            n = len(self._waiting[0].prompt_ids)
            if group and tokens + n > self.prefill_tokens_per_step:
                break
            group.append(self._waiting.popleft())
            tokens += n
        if not group:
            return
        rows = [_Row(r, self.tokenizer) for r in group]
        try:
            for row in rows:
                req = row.request
                row.sampler = RowSampler(req.temperature, req.top_p, req.seed, req.constraint)
            batch, logits = RunningBatch.prefill(
                self.model, [r.prompt_ids for r in group], self.tokenizer.pad_token_id, self.device,
                self._adapter_names(rows))
            self.prefills += 1
            done = self._sample(rows, logits)
        except Exception as exc:  # a failed prefill fails its own requests only; the running rows go on
            self._fail(rows, exc, "prefill of %d request(s) failed")
            return
        keep = [i for i in range(len(rows)) if i not in done]
        if not keep:
            return
        if len(keep) < len(rows):
            batch.keep(keep)
        rows = [rows[i] for i in keep]
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.join(batch)
        self._rows.extend(rows)

    def _decode_step(self) -> None:
        rows = self._rows
        try:
            logits = self._batch.decode(self.model, [row.next_token for row in rows], self._adapter_names(rows))
            self.steps += 1
            self._since_admit += 1
            done = self._sample(rows, logits)
        except Exception as exc:  # one failed step must not take the worker down
            self._fail(rows, exc, "decode step of %d row(s) failed")
            self._rows, self._batch = [], None
            return
        if done:
            self._keep([i for i in range(len(rows)) if i not in done])

    def _sample(self, rows: list[_Row], logits) -> set[int]:
        """Choose and hand each row its token; returns the indices of rows that finished (and are closed)."""
        tokens = choose(logits, [row.sampler for row in rows])
        done = set()
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if row.request.cancel.is_set():
                row.close("cancelled")  # the token sampled after a cancel is not part of the answer
                done.add(i)
                continue
            try:
                reason = row.take(token, self.eos_ids)
            except Exception as exc:  # a constraint that raises ends its own row only
                log.exception("decoding constraint failed")
                row.close("error", BackendUnavailable(f"the decoding constraint failed: {type(exc).__name__}"))
                done.add(i)
                continue
            if reason == "error":
                row.close("error", BackendUnavailable("the model produced no valid token"))
                done.add(i)
            elif reason is not None:
                row.close(reason)
                done.add(i)
        return done

    def _fail(self, rows: list[_Row], exc: Exception, what: str) -> None:
        log.exception(what, len(rows))
        error = exc if isinstance(exc, ServingError) else BackendUnavailable(f"generation failed: {type(exc).__name__}")
        for row in rows:
            row.close("error", error)
