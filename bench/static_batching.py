"""Today's static scheduler, kept only for the bench's comparison with continuous batching.

A copy of the generation loop the worker had before continuous batching: gather up to
``max_batch_size`` waiting requests, run one ``generate()`` until every row is done, and only then look
at the queue again. Model changes, submission and shutdown are the real worker's (inherited).
"""

from __future__ import annotations

import queue
import time

from serving.batching import PEFT_BASE, GenerationRequest, GenerationWorker, _Control, _Row, log
from serving.errors import BackendUnavailable, ServingError
from serving.local import LocalBackend
from serving.types import BASE, GREEDY_BELOW


class _StaticRow(_Row):
    stop_reason: str | None = None  # set by the stopping criteria, acted on by the streamer


class _Hooks:
    """The per-row streamer, stopping criteria and sampling processor of one ``generate`` call."""

    def __init__(self, rows: list[_Row], eos_ids: set[int]):
        self.rows = rows
        self.eos_ids = eos_ids
        self.prompt_seen = False
        self._temps = self._top_p = self._greedy = None  # per-row tensors, built on the first step

    # StoppingCriteria: called with the new token already appended, before the streamer sees it.
    def stopping(self, input_ids, scores, **kwargs):
        import torch

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.closed or row.stop_reason is not None:
                done[i] = True
                continue
            if row.request.cancel.is_set():
                row.stop_reason = "cancelled"
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
            if reason not in ("stop", "cancelled"):
                row.add(token)
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


class StaticWorker(GenerationWorker):
    """The pre-continuous worker loop: one ``generate()`` per gathered batch."""

    def __init__(self, model, tokenizer, *, max_batch_size=None, prefill_tokens_per_step=512, admit_every_steps=2,
                 batch_wait_ms=5.0):
        super().__init__(model, tokenizer, max_batch_size=max_batch_size, prefill_tokens_per_step=prefill_tokens_per_step,
                         admit_every_steps=admit_every_steps)
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.batches = 0

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
        hooks = _Hooks([_StaticRow(r, self.tokenizer) for r in live], self.eos_ids)
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


class StaticBackend(LocalBackend):
    """``LocalBackend`` on the static scheduler."""

    worker_class = StaticWorker


class static_scheduler:  # noqa: N801 - used as a context manager, like contextlib's helpers
    """Within ``with static_scheduler():`` every new ``LocalBackend`` (the app's too) runs the static loop."""

    def __enter__(self):
        self._saved = LocalBackend.worker_class
        LocalBackend.worker_class = StaticWorker
        return self

    def __exit__(self, *exc):
        LocalBackend.worker_class = self._saved
