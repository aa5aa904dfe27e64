"""Values that travel between the web edge and a backend: requests, streamed answers, adapter facts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from serving.structured import StructuredOutput

# Conversations stay in the OpenAI/TRL ``messages`` shape end to end: [{"role": ..., "content": ...}].
Message = dict[str, str]

BASE = "base"  # the bare base model, no adapter
# Dividing logits by a temperature this small overflows to inf/NaN; at such temperatures sampling is
# greedy anyway, so below it a request is decoded greedily.
GREEDY_BELOW = 1e-4
PRODUCTION = "production"  # alias re-pointed by promotion and rollback


class TokenConstraint(Protocol):
    """A per-request decoding constraint (grammar-constrained structured output).

    The generation worker calls ``mask`` on this row's next-token scores before sampling, then
    ``accept`` with the token it chose; once ``is_terminated()`` the row ends with finish_reason
    "stop". One instance serves one request; the worker calls it from its own thread only.
    """

    def mask(self, scores: torch.Tensor) -> torch.Tensor: ...  # 1-D scores over the vocabulary

    def accept(self, token_id: int) -> None: ...

    def is_terminated(self) -> bool: ...


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: the server's max_new_tokens
    temperature: float = 0.7  # 0 (or below GREEDY_BELOW) means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # the answer ends just before the first of these (finish_reason "stop")
    seed: int | None = None  # reproducible sampling for this request alone (batch-mates draw apart)
    constraint: TokenConstraint | None = field(default=None, compare=False)  # structured output
    # What the client asked the answer to be (response_format / tools): plain data a remote engine gets as
    # is; the local backend compiles it into ``constraint`` (serving/structured.py).
    structured: StructuredOutput | None = field(default=None, compare=False)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass
class Completion:
    """What a finished stream reports: the answer and its facts, for storage and the API's usage block."""

    text: str = ""
    adapter: str = BASE  # the concrete adapter that answered (aliases resolved)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Literal["stop", "length", "cancelled", "error", "tool_calls"] | None = None
    tool_calls: list[dict] | None = None  # OpenAI-shaped calls when the answer is a tool call
    first_token_s: float | None = None  # time to first token
    latency_s: float = 0.0


class ChatStream:
    """An answer being generated: iterate for text deltas; ``completion`` is filled when it ends.

    Backends validate a request before returning one, so a caller can answer 4xx before streaming.
    ``cancel()`` stops generation early (the user pressed stop or went away).
    """

    def __init__(self, deltas: Iterator[str], completion: Completion, cancel_event: threading.Event):
        self._deltas = deltas
        self.completion = completion
        self._cancel = cancel_event

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def cancel(self) -> None:
        """Stop generating; safe from any thread (the reader sees the stream end at the next step)."""
        self._cancel.set()

    def close(self) -> None:
        """Stop generating and let go of the stream now, without reading to its end.

        Call it from the thread that reads the stream (or when nobody does): a generator running in another
        thread cannot be closed, and that reader ends on its own once ``cancel`` is seen.
        """
        self._cancel.set()
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()

    def text(self) -> str:
        """Drain the stream and return the whole answer."""
        for _ in self._deltas:
            pass
        return self.completion.text


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str | None = None  # None for base and for engine-side adapters we did not load
    aliases: tuple[str, ...] = ()  # e.g. ("production",)
    in_flight: int = 0
    meta: dict = field(default_factory=dict, compare=False)
