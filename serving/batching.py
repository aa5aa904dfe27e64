"""The generation worker: one thread owns the model and schedules every step (continuous batching).

At each step the worker drops the rows that finished, were cancelled or hit a stop, admits waiting
requests as new rows (while the batch has room and the step's prompt budget is not spent), and runs one
forward for all rows: decoding rows feed their next token, new rows a chunk of their prompt, in the same
input (mixed, chunked prefill: see ``serving/kv_batch.py``). A new chat therefore starts within a step,
whatever else is generating, and its admission costs the running rows a wider step, not an extra forward.
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
        # Tokens the model has not seen yet: the prompt (fed in chunks within the step's budget), then
        # each sampled token.
        self.feed: list[int] = list(request.prompt_ids)
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
        self.feed = [token]
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
    """Owns ``model`` on one thread; ``submit`` requests, ``call`` model changes between steps."""

    def __init__(self, model, tokenizer, *, max_batch_size: int | None = None, prefill_tokens_per_step: int = 512,
                 admit_every_steps: int = 1):
        self.model = model  # becomes a PeftModel when the first adapter is loaded
        self.tokenizer = tokenizer
        device = getattr(model, "device", None) or next(model.parameters()).device
        self.device = device
        self.max_batch_size = max_batch_size or default_max_batch_size(device.type)
        # Prompt tokens fed per step, shared by the rows still being prefilled; a longer prompt goes in chunks.
        self.prefill_tokens_per_step = prefill_tokens_per_step
        # While rows decode, waiting requests are admitted every this many steps (see _admission_due).
        self.admit_every_steps = admit_every_steps
        self._since_admit = 0  # steps run since the last admission
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
        self.steps = 0  # forwards run (one per step), for tests and the bench
        self.prefills = 0  # steps that fed prompt tokens

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
        """Run ``fn`` on the worker thread between steps and return its result (or raise its error)."""
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
                    self._step()
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

        Admitting costs no forward of its own (newcomers' prompts ride in the step's one forward), only
        wider steps while their prompts are fed; arrivals can still be gathered as TGI's router does
        (``waiting_served_ratio``, ``max_waiting_tokens``): at once when nothing runs or the waiting line is
        as long as the running batch, else every ``admit_every_steps`` steps (1, the default: every step).
        """
        if not self._waiting or len(self._rows) >= self.max_batch_size:
            return False
        return (not self._rows or len(self._waiting) >= len(self._rows)
                or self.admit_every_steps <= 1 or self._since_admit >= self.admit_every_steps)

    def _admit(self) -> None:
        """Turn waiting requests into rows of the running batch while there is room and prompt budget left.

        A row's prompt is fed over the next steps, out of ``prefill_tokens_per_step`` shared by every row
        still being prefilled, oldest first (see ``_plan``); so a newcomer is admitted only while that
        budget is not yet spent by the rows before it.
        """
        if not self._admission_due():
            return
        self._since_admit = 0
        budget = self.prefill_tokens_per_step - sum(len(row.feed) for row in self._rows if not row.tokens)
        room = self.max_batch_size - len(self._rows)
        rows: list[_Row] = []
        while self._waiting and len(rows) < room and budget > 0:
            request = self._waiting.popleft()
            row = _Row(request, self.tokenizer)
            try:
                row.sampler = RowSampler(request.temperature, request.top_p, request.seed, request.constraint)
            except Exception as exc:  # a bad request fails alone
                self._fail([row], exc, "admission of %d request(s) failed")
                continue
            rows.append(row)
            budget -= len(request.prompt_ids)
        if not rows:
            return
        if self._batch is None:
            self._batch = RunningBatch(self.device, self.tokenizer.pad_token_id)
        self._batch.add_rows([row.adapter_name for row in rows])  # a lane per adapter
        self._rows.extend(rows)

    def _plan(self) -> list[list[int]]:
        """Each row's tokens for this step: its sampled token, or the next chunk of its prompt.

        Prompts take ``prefill_tokens_per_step`` in admission order, as vLLM's scheduler hands its token
        budget to prefills (``long_prefill_token_threshold`` aside): the row that reaches the end of the
        budget gets a chunk and the rest next step; a row past the budget is fed nothing this step.
        """
        budget = self.prefill_tokens_per_step
        feeds = []
        for row in self._rows:
            if row.tokens:  # decoding: its one sampled token
                feeds.append(row.feed)
                continue
            chunk = row.feed[:max(budget, 0)]
            budget -= len(chunk)
            feeds.append(chunk)
        return feeds

    def _step(self) -> None:
        """One forward over every row: decoding rows' next tokens and prompt chunks together."""
        import torch

        rows = self._rows
        feeds = self._plan()
        try:
            names = self._adapter_names(rows)  # None: one adapter, made the active one
            logits = self._batch.step(self.model, feeds, None if names is None else self._batch.lanes)
            self.steps += 1
            self.prefills += any(not row.tokens for row in rows)
            self._since_admit += 1
            for row, fed in zip(rows, feeds, strict=True):
                row.feed = row.feed[len(fed):]
            # A row samples once its prompt is all in; a row mid-prompt waits for its next chunk.
            ready = [i for i, row in enumerate(rows) if not row.feed]
            if len(ready) < len(rows):
                logits = logits.index_select(0, torch.tensor(ready, dtype=torch.long, device=logits.device))
            done = {ready[i] for i in self._sample([rows[i] for i in ready], logits)}
        except Exception as exc:  # one failed step must not take the worker down
            self._fail(rows, exc, "step of %d row(s) failed")
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
