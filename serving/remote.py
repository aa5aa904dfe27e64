"""``RemoteBackend``: generate on a remote OpenAI-compatible engine (vLLM, or another Tuneloop).

Chat goes through ``huggingface_hub.InferenceClient``; the engine's model list and vLLM's runtime LoRA
routes (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, documented in vLLM's
``docs/features/lora.md``, "Dynamically serving LoRA Adapters") go through a small ``httpx2`` client,
the HTTP library ``InferenceClient`` itself uses, so one set of transport errors is mapped.

The ``production`` alias lives here, client-side: the engine knows concrete adapter names only. Every
engine failure becomes a ``serving.errors`` error; nothing raises at construction, so the app keeps
serving its UI and storing feedback while the engine is down.

The engine is not trusted to be well-behaved: an answer is cut where ``max_tokens`` should have ended it
(chunks and characters), a stream still running after ``stream_timeout_s`` is closed, a reply with no
chunk is a failure (not an empty answer), token counts must be whole numbers, error messages are cut to a
few hundred characters, and the model list is capped in bytes and entries, its adapter names
checked as Tuneloop's own. Not bounded: the length of one SSE line before it is parsed, which
``InferenceClient`` reads whole (the stream timeout ends such a stream).

Not escaped here: control-token strings in message text (``<|im_end|>`` and the like, which the local
renderer breaks, ``serving.chat_format.escape_control_tokens``). The engine renders the messages with its own
template and tokenizes the result with special tokens parsed (vLLM's chat API documents no option against
it; vllm-project/vllm#31735 proposed one and was closed), so on a remote engine such text still reaches the
model as control tokens. Escaping needs the served model's tokenizer, which this client does not hold. Training is not affected: training sets are rendered
locally, escaped, whatever the backend.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import httpx2
from huggingface_hub import InferenceClient
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled

from serving.adapters import ALIASES, check_name
from serving.errors import (
    AdapterInUse,
    AdapterRejected,
    BackendUnavailable,
    BadRequest,
    PromptTooLong,
    ServingError,
    UnknownAdapter,
)
from serving.local import validate_messages, validate_params
from serving.types import BASE, PRODUCTION, AdapterInfo, ChatStream, Completion, Message, SamplingParams

log = logging.getLogger(__name__)

MODELS_TTL_S = 2.0  # how long the engine's model list is trusted: short, since other apps may load adapters
LIST_TIMEOUT_S = 5.0  # the model list is small: /healthz and the UI must not wait remote_timeout_s for it
UNLOAD_WAIT_S = 30.0  # how long unload waits for this app's in-flight requests on the adapter
# Bounds on what an engine sends back, so a broken or hostile one cannot make an answer, an error or the
# model list grow without end. An engine that ignores max_tokens is cut where it should have stopped.
CHUNK_SLACK = 16  # stream chunks beyond one per token: the role chunk, the finish and usage chunks, ...
MAX_CHARS_PER_TOKEN = 32  # a token is ~4 characters; 32 leaves room for long whitespace or code tokens
MAX_ENGINE_MODELS = 1000  # model list entries kept; an engine listing more is cut (and logged)
MAX_MODELS_BYTES = 4_000_000  # the model list body; more is answered as an engine failure
MAX_ERROR_CHARS = 500  # of an engine's error message, as shown to users and logged
MAX_NAMES_SHOWN = 20  # adapter names an "unknown adapter" error lists

RUNTIME_LOADING_HELP = (
    "the engine at {url} cannot load adapters at run time. Either restart vLLM with "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (and --enable-lora) so Tuneloop can push new adapters, or "
    "list them at start-up with `vllm serve BASE --enable-lora --lora-modules {name}={path}` and set "
    "TUNELOOP_REMOTE_CAN_LOAD_ADAPTERS=false"
)


class RemoteBackend:
    """The ``Backend`` that forwards generation to an OpenAI-compatible engine at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        base_model: str = "",
        api_key: str = "",
        adapter_dir: str = "",
        timeout_s: float = 60.0,
        stream_timeout_s: float = 600.0,
        can_load_adapters: bool = True,
        max_new_tokens: int = 512,
    ):
        if not url:
            # Not raised: a misconfigured engine must not stop the UI and the store from starting.
            log.error("backend=remote but remote_url is empty: every generation will fail until it is set")
        self.url = url.rstrip("/")
        self.base_model = base_model
        self.adapter_dir = adapter_dir
        self.timeout_s = timeout_s  # each read from the engine
        self.stream_timeout_s = stream_timeout_s  # one whole streamed answer, however the engine trickles it
        self.can_load_adapters = can_load_adapters
        self.max_new_tokens = max_new_tokens
        self._api_key = api_key or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx2.Client(headers=headers, timeout=timeout_s)
        self._cond = threading.Condition()
        self._aliases: dict[str, str] = {PRODUCTION: BASE}
        self._in_flight: dict[str, int] = {}
        self._models: dict[str, dict] = {}  # engine model id -> its /v1/models entry (last known)
        self._models_at = float("-inf")  # monotonic time of the last successful fetch
        self._engine_base: str | None = None  # the engine's id for the base model
        self._failure: tuple[float, BackendUnavailable] | None = None  # last failed fetch, reused for the TTL

    @classmethod
    def from_settings(cls, settings) -> RemoteBackend:
        """Build from ``Settings``; an unreachable engine is logged, not raised."""
        backend = cls(
            settings.remote_url,
            base_model=settings.model,
            api_key=settings.remote_api_key,
            adapter_dir=settings.remote_adapter_dir,
            timeout_s=settings.remote_timeout_s,
            stream_timeout_s=settings.remote_stream_timeout_s,
            can_load_adapters=settings.remote_can_load_adapters,
            max_new_tokens=settings.max_new_tokens,
        )
        health = backend.health()
        if health["ok"]:
            log.info("remote engine at %s serves %d model(s)", backend.url, len(backend._models))
        else:
            log.warning("remote engine not reachable at start-up (serving continues without it): %s", health["error"])
        return backend

    # --- engine errors ----------------------------------------------------------------------------
    def _engine_error(self, exc: BaseException, timeout_s: float | None = None) -> ServingError:
        """Translate a transport or HTTP error from the engine into a ``serving.errors`` error."""
        if isinstance(exc, ServingError):
            return exc
        if isinstance(exc, (InferenceTimeoutError, httpx2.TimeoutException)):
            return BackendUnavailable(f"engine at {self.url} did not answer within {timeout_s or self.timeout_s:g} s")
        if isinstance(exc, OfflineModeIsEnabled):
            return BackendUnavailable(self._offline_message())
        response = getattr(exc, "response", None)
        if isinstance(exc, (HfHubHTTPError, httpx2.HTTPStatusError)) and response is not None:
            return self._status_error(response)
        detail = str(exc)[:MAX_ERROR_CHARS]  # an engine's words, of any length
        if isinstance(exc, (httpx2.TransportError, OSError)):
            return BackendUnavailable(f"engine at {self.url} is down: {detail}")
        return BackendUnavailable(f"engine at {self.url} failed: {type(exc).__name__}: {detail}")

    def _offline_message(self) -> str:
        # huggingface_hub refuses every URL in offline mode, the engine's included.
        return (f"cannot reach the engine at {self.url}: HF_HUB_OFFLINE is set, which blocks huggingface_hub's "
                "client; unset it when TUNELOOP_BACKEND=remote")

    def _status_error(self, response) -> ServingError:
        status = response.status_code
        message, code = _error_fields(response)
        if status == 404:
            return UnknownAdapter(f"the engine at {self.url} has no such model: {message}")
        if status in (400, 422):
            long_prompt = code == "context_length_exceeded" or "maximum context length" in message.lower()
            return (PromptTooLong if long_prompt else BadRequest)(f"the engine refused the request: {message}")
        if status in (401, 403):
            return BackendUnavailable(f"engine at {self.url} refused our API key (HTTP {status}); check TUNELOOP_REMOTE_API_KEY")
        return BackendUnavailable(f"engine at {self.url} failed with HTTP {status}: {message}")

    # --- the engine's model list ------------------------------------------------------------------
    def _fetch_models(self) -> dict[str, dict]:
        timeout_s = min(self.timeout_s, LIST_TIMEOUT_S)
        try:
            with self._http.stream("GET", f"{self.url}/models", timeout=timeout_s) as response:
                response.raise_for_status()
                data = json.loads(_read_capped(response, MAX_MODELS_BYTES, "model list")).get("data", [])
        except (httpx2.HTTPError, ValueError, AttributeError, BackendUnavailable) as exc:
            error = self._engine_error(exc, timeout_s)
            with self._cond:
                if isinstance(error, BackendUnavailable):
                    self._failure = (time.monotonic(), error)
            raise error from exc
        models = _usable_models(data, self.base_model, self.url)
        with self._cond:
            self._models, self._models_at, self._failure = models, time.monotonic(), None
            self._engine_base = _find_base(models, self.base_model)
        return models

    def _current_models(self, *, refresh: bool = False) -> dict[str, dict]:
        """The engine's models: cached for ``MODELS_TTL_S``; raises ``BackendUnavailable``.

        A failure is also remembered for ``MODELS_TTL_S``, so a down engine costs the UI and /metrics
        one connection attempt per interval, not one per call.
        """
        with self._cond:
            now = time.monotonic()
            if not refresh and now - self._models_at < MODELS_TTL_S:
                return self._models
            if not refresh and self._failure is not None and now - self._failure[0] < MODELS_TTL_S:
                raise self._failure[1]
        return self._fetch_models()

    def _engine_model(self, concrete: str) -> str:
        """The id the engine knows a concrete Tuneloop adapter name by (``base`` is the engine's base id)."""
        if concrete != BASE:
            return concrete
        if self._engine_base is None:
            self._current_models(refresh=True)
        if self._engine_base is None:
            raise BackendUnavailable(f"the engine at {self.url} lists no base model")
        return self._engine_base

    # --- generation ---------------------------------------------------------------------------------
    def stream_chat(self, messages: list[Message], adapter: str, params: SamplingParams) -> ChatStream:
        validate_messages(messages)
        max_tokens = validate_params(params, self.max_new_tokens)
        concrete = self.resolve(adapter)
        # stop, seed and structured output go to the engine as the client sent them (vLLM implements all).
        # Caveat: InferenceClient rewrites a json_schema response_format into TGI's {"type": "json_object",
        # "value": schema}; a Tuneloop engine reads that, vLLM would keep only json_object (not yet fixed).
        extra: dict = dict(params.structured.raw) if params.structured is not None else {}
        if params.stop:
            extra["stop"] = list(params.stop)
        if params.seed is not None:
            extra["seed"] = params.seed
        engine_model = self._engine_model(concrete)
        # One client per request: InferenceClient keeps each streamed response open in its ExitStack until
        # close(), so a shared client would hold every finished or abandoned stream until shutdown.
        client = InferenceClient(base_url=self.url, api_key=self._api_key, timeout=self.timeout_s)
        self._acquire(concrete)
        started = time.monotonic()
        try:
            # Sends the request and waits for the status line, so engine refusals raise here, before any token.
            chunks = client.chat_completion(
                messages, model=engine_model, stream=True, max_tokens=max_tokens,
                temperature=float(params.temperature), top_p=float(params.top_p),
                stream_options={"include_usage": True}, **extra,
            )
        except BaseException as exc:
            client.close()
            self._release(concrete)
            if isinstance(exc, Exception):
                raise self._engine_error(exc) from exc
            raise
        completion = Completion(adapter=concrete)
        cancel = threading.Event()
        # The read timeout restarts with every byte, so an engine that trickles keep-alives or tokens could hold
        # this request forever: past stream_timeout_s the response is closed under the reader.
        expired = threading.Event()
        watchdog = threading.Timer(self.stream_timeout_s, _expire, args=(client, cancel, expired))
        watchdog.daemon = True
        watchdog.start()
        deltas = self._deltas(client, chunks, completion, cancel, started, max_tokens, watchdog, expired)
        next(deltas)  # into its try: from here a close() runs the finally (adapter and response given back) unread
        return ChatStream(deltas, completion, cancel)

    def _deltas(self, client, chunks, completion: Completion, cancel: threading.Event, started: float,
                max_tokens: int, watchdog: threading.Timer, expired: threading.Event) -> Iterator[str]:
        deltas = 0
        usage = None
        calls: dict[int, dict] = {}  # streamed tool calls by index: the id and name come first, arguments in parts
        budget = _Budget(max_tokens)
        seen = 0  # chunks parsed
        try:
            yield ""  # taken by stream_chat, never by a reader
            for chunk in chunks:
                if expired.is_set():
                    raise self._stream_timeout()
                if cancel.is_set():
                    completion.finish_reason = "cancelled"
                    return
                if not budget.take_chunk():
                    self._cut(completion, "chunks")
                    break
                seen += 1
                usage = chunk.usage or usage
                for choice in chunk.choices or ():
                    text = budget.take_text(choice.delta.content if choice.delta else None)
                    if text:
                        if completion.first_token_s is None:
                            completion.first_token_s = time.monotonic() - started
                        completion.text += text
                        deltas += 1
                        yield text
                    for tc in (choice.delta.tool_calls or ()) if choice.delta else ():
                        call = calls.setdefault(tc.index or 0, {"id": "", "type": "function",
                                                                "function": {"name": "", "arguments": ""}})
                        call["id"] = (tc.id or call["id"])[:200]
                        if tc.function is not None:
                            call["function"]["name"] += budget.take_text(tc.function.name)
                            call["function"]["arguments"] += budget.take_text(tc.function.arguments)
                    if choice.finish_reason:
                        completion.finish_reason = (choice.finish_reason if choice.finish_reason in ("length", "tool_calls")
                                                    else "stop")
                if budget.spent:
                    self._cut(completion, "characters")
                    break
            if not seen and not cancel.is_set():  # e.g. an HTML page: no answer, not an empty one
                raise BackendUnavailable(f"engine at {self.url} sent no chat completion chunks (not an OpenAI "
                                         "event stream)")
            if calls:
                completion.tool_calls = [calls[i] for i in sorted(calls)]
                completion.finish_reason = "tool_calls"
            if completion.finish_reason is None:
                completion.finish_reason = "cancelled" if cancel.is_set() else "stop"
        except GeneratorExit:
            completion.finish_reason = completion.finish_reason or "cancelled"  # the caller went away
            raise
        except Exception as exc:
            completion.finish_reason = "error"
            if isinstance(exc, ServingError):
                raise
            if expired.is_set():  # the watchdog closed the response under the reader
                raise self._stream_timeout() from exc
            if isinstance(exc, (httpx2.HTTPError, HfHubHTTPError, OSError)):
                raise self._engine_error(exc) from exc
            # An in-band error event, e.g. the engine failed mid-answer; OpenAI style carries a dict.
            detail = exc.args[0] if exc.args else exc
            message = detail.get("message", detail) if isinstance(detail, dict) else detail
            raise BackendUnavailable(f"engine at {self.url} failed mid-answer: "
                                     f"{str(message)[:MAX_ERROR_CHARS]}") from exc
        finally:
            watchdog.cancel()
            completion.latency_s = time.monotonic() - started
            # The engine's counts are stored as they are: a count that is not a whole number a token column
            # holds counts as missing (a string failed the request, 10**30 the store's whole batch of turns).
            prompt_tokens = _token_count(getattr(usage, "prompt_tokens", None))
            completion_tokens = _token_count(getattr(usage, "completion_tokens", None))
            completion.prompt_tokens = prompt_tokens or 0
            # without it, one delta is about one token in OpenAI-style streams
            completion.completion_tokens = deltas if completion_tokens is None else completion_tokens
            client.close()  # closes the response: an abandoned stream stops generating on the engine
            self._release(completion.adapter)

    def _stream_timeout(self) -> BackendUnavailable:
        return BackendUnavailable(f"engine at {self.url} did not finish the answer within {self.stream_timeout_s:g} s")

    def _cut(self, completion: Completion, what: str) -> None:
        """The engine sent more than ``max_tokens`` allows: the answer ends there, as if at the length limit."""
        completion.finish_reason = "length"
        log.warning("engine at %s sent more %s than max_tokens allows: answer cut (%d characters)",
                    self.url, what, len(completion.text))

    def _acquire(self, concrete: str) -> None:
        with self._cond:
            self._in_flight[concrete] = self._in_flight.get(concrete, 0) + 1

    def _release(self, concrete: str) -> None:
        with self._cond:
            if self._in_flight.get(concrete, 0) > 0:
                self._in_flight[concrete] -= 1
            self._cond.notify_all()

    # --- adapters -------------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        with self._cond:
            concrete = self._aliases.get(name, name)
        if concrete == BASE:
            return BASE
        try:
            models = self._current_models()
        except BackendUnavailable:
            with self._cond:
                if concrete in self._models:  # last known: let the chat call itself report the outage
                    return concrete
            raise
        if concrete not in models:
            models = self._current_models(refresh=True)  # perhaps loaded a moment ago by another app
        if concrete == self._engine_base:
            return BASE  # the engine's own name for the base model
        if concrete not in models:
            known = [BASE, *sorted(self._adapter_ids(models))]
            more = f" and {len(known) - MAX_NAMES_SHOWN} more" if len(known) > MAX_NAMES_SHOWN else ""
            raise UnknownAdapter(f"no adapter named {name[:80]!r} on the engine at {self.url} "
                                 f"(it serves: {', '.join(known[:MAX_NAMES_SHOWN])}{more})")
        return concrete

    def _adapter_ids(self, models: dict[str, dict]) -> list[str]:
        # A Tuneloop engine lists its own "production"; ours is the one that counts, so it is hidden.
        return [i for i in models if i not in (self._engine_base, PRODUCTION, BASE)]

    def list_adapters(self) -> list[AdapterInfo]:
        """The engine's adapters, ``base`` and ``production``; the last known list while the engine is down."""
        stale = False
        try:
            models = self._current_models()
        except BackendUnavailable as exc:
            log.warning("listing adapters from the last known engine state: %s", exc)
            stale = True
        with self._cond:
            models, aliases, in_flight = dict(self._models), dict(self._aliases), dict(self._in_flight)

        def info(name: str, path: str | None, meta: dict) -> AdapterInfo:
            pointing = tuple(sorted(a for a, t in aliases.items() if t == name))
            return AdapterInfo(name=name, path=path, aliases=pointing, in_flight=in_flight.get(name, 0),
                               meta={**meta, "stale": stale})

        infos = [info(BASE, None, {"engine_id": self._engine_base})]
        infos += [info(i, _text_or_none(models[i].get("root")), {"engine_id": i}) for i in self._adapter_ids(models)]
        infos.append(AdapterInfo(name=PRODUCTION, meta={"alias_of": aliases[PRODUCTION], "stale": stale}))
        return infos

    def engine_path(self, name: str, path: Path) -> str:
        """Where the engine finds adapter ``name``: under ``remote_adapter_dir``, else ``path`` as given."""
        return str(PurePosixPath(self.adapter_dir) / name) if self.adapter_dir else str(path)

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Ask the engine to load ``name`` from its view of the adapters directory (vLLM runtime loading)."""
        check_name(name)
        local = Path(path)
        if local.is_dir() and not (local / "adapter_config.json").is_file():
            raise AdapterRejected(f"adapter {name!r} refused: {local} has no adapter_config.json")
        engine_path = self.engine_path(name, local)
        if not self.can_load_adapters:
            raise AdapterRejected(RUNTIME_LOADING_HELP.format(url=self.url, name=name, path=engine_path))
        response = self._post("load_lora_adapter", {"lora_name": name, "lora_path": engine_path})
        message, _code = _error_fields(response) if response.status_code != 200 else ("", None)
        if _route_missing(response):
            raise AdapterRejected(RUNTIME_LOADING_HELP.format(url=self.url, name=name, path=engine_path))
        if response.status_code == 400 and "already been loaded" in message:
            log.info("adapter %s was already loaded on the engine", name)
        elif response.status_code == 404:
            raise AdapterRejected(
                f"adapter {name!r} refused: the engine found no adapter at {engine_path} ({message}); "
                "check that TUNELOOP_REMOTE_ADAPTER_DIR is the adapters directory as the engine sees it")
        elif response.status_code in (400, 422):
            raise AdapterRejected(f"adapter {name!r} refused by the engine: {message}")
        elif response.status_code != 200:
            raise self._status_error(response)
        else:
            log.info("adapter loaded on the engine: %s from %s", name, engine_path)
        self._invalidate()
        return AdapterInfo(name=name, path=engine_path, meta={"engine": self.url})

    def unload_adapter(self, name: str) -> None:
        if name in (BASE, PRODUCTION):
            raise AdapterInUse(f"{name!r} cannot be unloaded")
        with self._cond:
            pointing = [a for a, t in self._aliases.items() if t == name]
            if pointing:
                raise AdapterInUse(f"adapter {name!r} is what {pointing[0]!r} points at; re-point it first")
            if not self._cond.wait_for(lambda: self._in_flight.get(name, 0) == 0, timeout=UNLOAD_WAIT_S):
                raise AdapterInUse(f"adapter {name!r} still has {self._in_flight[name]} request(s) after {UNLOAD_WAIT_S:.0f}s")
        if not self.can_load_adapters:
            raise AdapterRejected(RUNTIME_LOADING_HELP.format(url=self.url, name=name, path="PATH"))
        response = self._post("unload_lora_adapter", {"lora_name": name})
        if _route_missing(response):
            raise AdapterRejected(RUNTIME_LOADING_HELP.format(url=self.url, name=name, path="PATH"))
        if response.status_code == 404:
            raise UnknownAdapter(f"no adapter named {name!r} is loaded on the engine at {self.url}")
        if response.status_code != 200:
            raise self._status_error(response)
        self._invalidate()
        log.info("adapter unloaded on the engine: %s", name)

    def _post(self, route: str, body: dict):
        try:
            return self._http.post(f"{self.url}/{route}", json=body)
        except httpx2.HTTPError as exc:
            raise self._engine_error(exc) from exc

    def _invalidate(self) -> None:
        with self._cond:
            self._models_at = float("-inf")

    def set_alias(self, alias: str, target: str) -> None:
        if alias not in ALIASES:
            raise UnknownAdapter(f"{alias!r} is not an alias (aliases: {sorted(ALIASES)})")
        try:
            concrete = self.resolve(target)
        except BackendUnavailable as exc:
            # The alias lives here, so a down engine need not lose it: keep the (well-formed) name
            # unchecked; chat reports the outage meanwhile, and an unknown name once the engine is back.
            if target != BASE:
                check_name(target)
            concrete = target
            log.warning("alias %s -> %s kept without checking: %s", alias, target, exc)
        with self._cond:
            previous = self._aliases.get(alias)
            self._aliases[alias] = concrete
        log.info("alias %s: %s -> %s", alias, previous, concrete)

    def health(self) -> dict:
        """Never raises: ``ok`` says whether the engine answered its model list."""
        report = {"ok": False, "backend": "remote", "url": self.url, "base_model": self.base_model}
        try:
            models = self._fetch_models()
        except Exception as exc:  # a health probe reports, it does not fail
            report["error"] = str(self._engine_error(exc))
            return report
        report.update(ok=True, engine_base=self._engine_base, adapters=self._adapter_ids(models),
                      production=self._aliases[PRODUCTION])
        if hf_constants.is_offline_mode():  # the model list answered, but chat would be refused
            report.update(ok=False, error=self._offline_message())
        return report

    def close(self) -> None:
        self._http.close()


def _find_base(models: dict[str, dict], base_model: str) -> str | None:
    """The engine's base model id: ``base_model`` itself, a Tuneloop engine's ``base``, else the first parentless one."""
    if base_model in models:
        return base_model
    if BASE in models:
        return BASE
    return next((i for i, m in models.items() if m.get("parent") is None and i != PRODUCTION), None)


def _error_fields(response) -> tuple[str, str | None]:
    """(message, code) from an engine error body: OpenAI ``{"error": {...}}``, vLLM's older flat
    ``{"object": "error", "message": ...}``, FastAPI's ``{"detail": ...}``, or plain text."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return (response.text or f"HTTP {response.status_code}")[:MAX_ERROR_CHARS], None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") if isinstance(error.get("code"), str) else None
            return str(error.get("message", error))[:MAX_ERROR_CHARS], code
        if isinstance(error, str):
            return error[:MAX_ERROR_CHARS], None
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])[:MAX_ERROR_CHARS], None
    return str(body)[:MAX_ERROR_CHARS], None


def _route_missing(response) -> bool:
    """True when the engine has no such route (vLLM registers the LoRA routes only with
    VLLM_ALLOW_RUNTIME_LORA_UPDATING), as opposed to vLLM's own 404 for an adapter path it cannot find."""
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    try:
        body = response.json()
    except ValueError:
        return True
    return not isinstance(body, dict) or body.get("detail") == "Not Found"


class _Budget:
    """What one answer may still take from the engine: chunks, and characters of text and tool calls."""

    def __init__(self, max_tokens: int):
        self.chunks = 2 * max_tokens + CHUNK_SLACK  # generous: some engines send a token's text in two chunks
        self.chars = max_tokens * MAX_CHARS_PER_TOKEN
        self.spent = False

    def take_chunk(self) -> bool:
        self.chunks -= 1
        return self.chunks >= 0

    def take_text(self, text) -> str:
        """``text`` (a string, or nothing), cut to what is left; ``spent`` once nothing is."""
        text = text if isinstance(text, str) else ""
        if len(text) > self.chars:
            text, self.spent = text[:self.chars], True
        self.chars -= len(text)
        return text


def _expire(client, cancel: threading.Event, expired: threading.Event) -> None:
    """The watchdog's end of a stream: closing the client makes the reader's next read fail."""
    expired.set()
    cancel.set()
    client.close()


def _read_capped(response, limit: int, what: str) -> bytes:
    """A streamed response's body, refused once it passes ``limit`` bytes (before it is all in memory)."""
    body = bytearray()
    for part in response.iter_bytes():
        body += part
        if len(body) > limit:
            raise BackendUnavailable(f"the engine's {what} is over {limit} bytes")
    return bytes(body)


def _token_count(value) -> int | None:
    """A token count from the engine, if it is one (a whole number below 2**31, as the store keeps it)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _usable_models(data, base_model: str, url: str) -> dict[str, dict]:
    """The engine's model list as far as Tuneloop can use it: its base model, under whatever id the engine
    gives it, and the adapters with a well-formed name (``check_name``); at most ``MAX_ENGINE_MODELS``.

    Adapter names flow into pickers, error messages and the store, so one an engine makes up (empty, a path,
    markup, a megabyte long) is dropped here rather than checked everywhere."""
    entries = [m for m in (data if isinstance(data, list) else ())[:MAX_ENGINE_MODELS]
               if isinstance(m, dict) and isinstance(m.get("id"), str)]
    listed = {m["id"]: m for m in entries}
    base = _find_base(listed, base_model)
    models = {i: m for i, m in listed.items() if (i == base and len(i) <= 256) or _well_named(i)}
    if len(data if isinstance(data, list) else ()) > len(models):
        log.warning("engine at %s: %d model list entries ignored (malformed, badly named or over %d)",
                    url, len(data) - len(models), MAX_ENGINE_MODELS)
    return models


def _well_named(name: str) -> bool:
    try:
        check_name(name)
    except AdapterRejected:
        return name in (BASE, PRODUCTION)  # a Tuneloop engine lists its own; _adapter_ids leaves them out
    return True
