"""One chat turn end to end, shared by the API and the UI: route (A/B split), generate, store.

The assistant message id is chosen before generation so the API can return it as the response ``id``
in the first streamed chunk; the turn is stored when the stream ends (in ``finally``, so an answer cut
short by a stop or a dropped client is stored with what the user was shown).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from feedback.models import TurnRecord
from feedback.store import FeedbackStore
from feedback.text import text_problem
from serving.backend import Backend
from serving.errors import BadRequest, RequestTooLarge
from serving.structured import StructuredOutput
from serving.traffic import assign_arm
from serving.types import PRODUCTION, ChatStream, Completion, Message, SamplingParams
from web.access import check_conversation, check_model, owned_message
from web.auth import Principal

log = logging.getLogger(__name__)


def new_id() -> str:
    return uuid.uuid4().hex


def _strings(value) -> Iterator[tuple[tuple, str]]:
    """Every string in a JSON value, keys included, with the path of the value that holds it.

    Iterative, since the client picks the depth; a key is yielded before anything under it, so the
    paths of later strings hold only keys already checked."""
    stack = [((), value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            yield path, v
        elif isinstance(v, dict):
            for k, item in v.items():
                yield path, k
                stack.append(((*path, k), item))
        elif isinstance(v, (list, tuple)):
            stack.extend(((*path, i), item) for i, item in enumerate(v))


def _where(path: tuple) -> str:
    return ".".join(str(p)[:40] for p in path)


def _check_arguments(messages: list[Message]) -> None:
    """A tool call's ``arguments`` is pasted into prompts and stored text as is: it must be JSON (as OpenAI
    requires and vLLM checks), an object, since a function's parameters are one."""
    for i, m in enumerate(messages):
        for k, call in enumerate(m.get("tool_calls") or ()):
            try:
                ok = isinstance(json.loads(call["function"]["arguments"]), dict)
            except (TypeError, ValueError, KeyError, RecursionError):
                ok = False
            if not ok:
                raise BadRequest(f"messages.{i}.tool_calls.{k}.function.arguments must be a JSON object as a "
                                 "string, e.g. '{\"city\": \"Paris\"}'")


@dataclass(frozen=True)
class RequestLimits:
    """Bounds checked before a prompt is rendered or tokenized (settings max_messages, max_request_chars)."""

    max_messages: int = 256
    max_chars: int = 400_000

    def check(self, messages: list[Message], structured: StructuredOutput | None = None) -> None:
        """The one check of every string a request carries towards the backend: messages with their tool
        calls, and tools, tool_choice and response_format. Each must be text, and all together are counted."""
        if len(messages) > self.max_messages:
            raise RequestTooLarge(f"{len(messages)} messages; at most {self.max_messages} per request")
        total = 0
        for path, text in _strings({"messages": messages, **(structured.raw if structured else {})}):
            total += len(text)
            if total > self.max_chars:
                raise RequestTooLarge(f"over {self.max_chars} characters of text in messages, tools and schemas; "
                                      f"at most {self.max_chars} per request")
            problem = text_problem(text)
            if problem:
                raise BadRequest(f"{_where(path)}: text {problem}")
        _check_arguments(messages)


def tool_calls_text(calls: list[dict]) -> str:
    """A tool call as stored text (the Hermes/Qwen ``<tool_call>`` form), since a stored message is text."""
    return "".join(
        '<tool_call>\n{{"name": {}, "arguments": {}}}\n</tool_call>'.format(json.dumps(c["function"]["name"]),
                                                                       c["function"].get("arguments") or "{}")
        for c in calls)


def storable(messages: list[Message]) -> list[Message]:
    """Messages as the store keeps them, {role, content: str}: an assistant turn that only called tools
    is stored as the text of its calls; a ``tool`` message keeps its role."""
    out = []
    for m in messages:
        content = m.get("content") or ""
        if m.get("tool_calls"):
            content += tool_calls_text(m["tool_calls"])
        out.append({"role": m["role"], "content": content})
    return out


@dataclass
class ChatTurn:
    """A started turn: iterate ``deltas()`` for the answer; it is stored when iteration ends or ``close()``."""

    message_id: str
    conversation_id: str
    requested: str  # the adapter name the client asked for (may be an alias)
    stream: ChatStream
    _finish: callable = field(repr=False, default=None)
    _shown: list[str] = field(repr=False, default_factory=list)  # the deltas handed to the reader
    _reading: str = field(repr=False, default="no")  # "no", "yes", "done" (read to the end)

    @property
    def completion(self) -> Completion:
        return self.stream.completion

    def begin(self) -> None:
        """The reader now holds this turn's message id: from here on it is stored however it ends."""
        if self._reading == "no":
            self._reading = "yes"

    def deltas(self) -> Iterator[str]:
        self.begin()
        try:
            for delta in self.stream:
                self._shown.append(delta)
                yield delta
            self._reading = "done"
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating, if it still runs, and store the turn once: what its reader was shown when it left
        mid-answer (finish_reason "cancelled"), the whole answer when it read to the end. A turn nobody began
        to read (the later choices of an ``n`` > 1 stream whose client went away) is stopped, not stored:
        nobody saw it, and its message id was never sent (see ``begin``)."""
        self.stream.close()
        if self._reading != "no":
            self._finish(self._cut())

    def _cut(self) -> str | None:
        """The text shown, when the reader left before the answer's end; None when it saw it all or the
        answer failed (stored as the backend ended it, finish_reason "error")."""
        c = self.stream.completion
        shown = "".join(self._shown)
        if self._reading == "done" or c.finish_reason == "error" or (c.finish_reason and shown == c.text):
            return None
        return shown


class ChatService:
    # Conversation ids are issued here, never taken from a client (a test may swap this for fixed ids).
    new_conversation_id = staticmethod(new_id)

    def __init__(self, backend: Backend, store: FeedbackStore, on_turn=None, limits: RequestLimits | None = None):
        self.backend = backend
        self.store = store
        self.limits = limits or RequestLimits()
        self._on_turn = on_turn  # metrics hook: called with (requested, TurnRecord)

    def route(self, user: str, requested: str) -> tuple[str, str | None, str | None]:
        """The adapter to use for ``requested``: ``production`` traffic may go to an A/B candidate.

        Returns (adapter name, experiment id, arm). Assignment is sticky per user and experiment.
        """
        if requested != PRODUCTION:
            return requested, None, None
        experiment = self.store.active_experiment()
        if experiment is None:
            return requested, None, None
        arm = assign_arm(user, experiment.id, experiment.percent)
        return (experiment.candidate if arm == "candidate" else experiment.control), experiment.id, arm

    def start(
        self,
        principal: Principal,
        messages: list[Message],
        model: str,
        params: SamplingParams,
        *,
        conversation_id: str | None = None,
        replaces: str | None = None,
    ) -> ChatTurn:
        """Validate and start a turn; raises serving errors (4xx) before anything is stored.

        ``conversation_id`` continues a conversation this server issued to ``principal`` (admins: any);
        ``replaces`` names one of their answers. Bounds are checked before anything is tokenized.
        """
        self.limits.check(messages, params.structured)
        check_model(self.store, principal, model)
        if conversation_id is not None:
            check_conversation(self.store, principal, conversation_id)
        if replaces is not None:
            owned_message(self.store, principal, replaces)
        user = principal.name
        # A regenerate implies a thumbs-down by ``user``, which counts as their rating would: an admin's trains
        # as given, anyone else's is capped unless an admin trusts them when the turn is written (the store
        # reads that then: read now, a revocation during generation would leave the down trusted).
        trust = None if replaces is None else ("trusted" if principal.is_admin else "untrusted")
        # An answer decoded under a grammar may be text the client chose (a schema's const, a one-value enum).
        constrained = params.constraint is not None or (params.structured is not None and params.structured.constrained)
        adapter, experiment_id, arm = self.route(user, model)
        stream = self.backend.stream_chat(messages, adapter, params)
        message_id = new_id()
        conversation_id = conversation_id or self.new_conversation_id()
        stored = False

        def finish(cut: str | None) -> None:
            nonlocal stored
            if stored:
                return
            stored = True
            c = stream.completion
            answer = c.text if not c.tool_calls else (c.text or tool_calls_text(c.tool_calls))
            turn = TurnRecord(
                conversation_id=conversation_id,
                user=user,
                request_messages=storable(messages),
                assistant_message_id=message_id,
                answer=answer if cut is None else cut,
                adapter=c.adapter,
                base_model=self.backend.base_model,
                sampling={**asdict(replace(params, constraint=None, structured=None)),
                          "structured": params.structured.kind if params.structured else None},
                latency_ms=c.latency_s * 1000.0,
                first_token_ms=None if c.first_token_s is None else c.first_token_s * 1000.0,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                finish_reason=c.finish_reason if cut is None else "cancelled",
                replaces=replaces,
                experiment_id=experiment_id,
                arm=arm,
                origin="constrained" if constrained else "model",
                trust=trust,
            )
            self.store.record_turn(turn)
            log.info("turn stored message=%s conversation=%s adapter=%s tokens=%d",
                     message_id, conversation_id, c.adapter, c.completion_tokens)
            if self._on_turn is not None:
                self._on_turn(model, turn)

        return ChatTurn(message_id, conversation_id, model, stream, finish)

    def complete(self, principal: Principal, messages: list[Message], model: str, params: SamplingParams,
                 **kw) -> ChatTurn:
        """Run a turn to the end (non-streaming callers)."""
        turn = self.start(principal, messages, model, params, **kw)
        for _ in turn.deltas():
            pass
        return turn
