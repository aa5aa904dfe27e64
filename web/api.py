"""The HTTP API: OpenAI-compatible chat, feedback, arena and admin routes.

Handlers only translate between HTTP and the services in ``AppContext``; errors become JSON in
``web.errors``. Admin routes sit on a router whose dependency checks the role, so a new admin route
cannot forget the check. Every route of an authenticated router checks its caller before the request
body is read (``guarded_router``), so an anonymous caller learns nothing about any route's body.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from feedback.models import Rating
from feedback.store_core import RATING_REASONS
from retrain.canary import CanaryPolicy
from retrain.canary_report import experiment_report, pick_experiment
from serving.adapters import RESERVED
from serving.errors import AdapterRejected, BadRequest, UnknownAdapter
from serving.types import PRODUCTION, SamplingParams
from web import openai_compat as oa
from web import review
from web.access import chat_choices, check_battle, owned_message, public_models
from web.auth import LOCAL_USER, Principal
from web.context import AppContext
from web.errors import ApiError, install_handlers
from web.metrics import CONTENT_TYPE
from web.sse import EventStream

log = logging.getLogger(__name__)
MAX_TEXT = 100_000  # characters in one message; longer input is refused before tokenizing
ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # every id this server issues fits
# Control characters (C0, DEL, C1) and Unicode line breaks: never part of a name, and each could forge a log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# --- request shapes ----------------------------------------------------------------------------
def _encodable(v: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"): valid escapes, but no text the tokenizer or DuckDB takes."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
    return v


def _no_nul(v: str) -> str:
    """Free text may hold tabs and newlines, but a NUL cuts strings short in C code (tokenizers, DuckDB)."""
    if "\x00" in v:
        raise PydanticCustomError("nul_character", "text must not contain NUL characters")
    return v


def _no_control(v: str) -> str:
    if _CONTROL.search(v):
        raise PydanticCustomError("control_characters", "names must not contain control characters or line breaks")
    return v


def _safe_id(v: str) -> str:
    if not ID_RE.fullmatch(v):
        raise PydanticCustomError("invalid_id", "ids are 1 to 128 letters, digits, '.', '_' or '-'")
    return v


def check_id(value: str, what: str) -> str:
    """An id taken from a URL path: the same alphabet as in bodies, 400 otherwise."""
    if not ID_RE.fullmatch(value):
        raise ApiError(400, f"invalid {what} id: ids are 1 to 128 letters, digits, '.', '_' or '-'", code="invalid_id")
    return value


Text = Annotated[str, AfterValidator(_encodable), AfterValidator(_no_nul)]  # free text
Name = Annotated[str, AfterValidator(_encodable), AfterValidator(_no_control)]  # adapter names, paths, enums
Id = Annotated[str, AfterValidator(_safe_id)]  # message, conversation, battle and run ids


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Text = Field("", max_length=200)
    type: Literal["function"] = "function"
    function: dict[str, Any]

    @field_validator("function")
    @classmethod
    def _named(cls, v):
        if not isinstance(v.get("name"), str) or not isinstance(v.get("arguments", ""), str):
            raise ValueError("a tool call's function needs a string name and string arguments")
        return {"name": v["name"], "arguments": v.get("arguments", "")}


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=64)
    tool_call_id: Text | None = Field(None, max_length=200)

    @field_validator("content")
    @classmethod
    def _text_only(cls, v):
        if v is None:
            return v
        if isinstance(v, list):  # OpenAI content parts: only text parts are understood
            texts = []
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                texts.append(part["text"])
            v = "".join(texts)
        if len(v) > MAX_TEXT:
            raise ValueError(f"message longer than {MAX_TEXT} characters")
        return _no_nul(_encodable(v))

    @model_validator(mode="after")
    def _shape(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only in an assistant message with tool_calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def message(self) -> dict:
        """The OpenAI/TRL message the backend renders; ``developer`` is OpenAI's new name for ``system``."""
        m: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.content}
        if self.tool_calls:
            m["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            m["tool_call_id"] = self.tool_call_id
        return m


# Fields OpenAI defines that Tuneloop does not implement: a value that would change the answer is refused
# (400 unsupported_parameter) rather than ignored; the neutral value (false, 0, empty) is accepted.
UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "frequency_penalty", "presence_penalty", "functions",
               "function_call", "audio", "modalities", "prediction", "web_search_options", "reasoning_effort",
               "verbosity")
# Fields that change nothing here: bookkeeping, or promises Tuneloop keeps anyway (one tool call per answer
# satisfies parallel_tool_calls either way).
IGNORED = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
           "prompt_cache_key")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are checked in _refuse_unsupported
    model: Name = PRODUCTION
    messages: list[ChatMessageIn]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, description="choices to generate (at most the max_choices setting)")
    stop: Text | list[Text] | None = Field(None, description="up to 4 strings; the answer ends before the first")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    conversation_id: Id | None = Field(None, description=(
        "Tuneloop: continue a conversation; only an id this server returned to you (unknown ids: 404)"))
    replaces: Id | None = Field(None, description="Tuneloop: id of your answer this regenerates")

    @model_validator(mode="after")
    def _tool_results_answer_calls(self):
        """As OpenAI: a tool message answers a call an earlier assistant message made (its ``tool_call_id``);
        one answering nothing is a client bug, and rendered it would put a result the model never asked for
        into the prompt, and into what its answer trains on."""
        called: set[str] = set()
        for i, m in enumerate(self.messages):
            if m.role == "assistant":
                called |= {c.id for c in m.tool_calls or () if c.id}
            elif m.role == "tool" and m.tool_call_id not in called:
                raise ValueError(f"messages[{i}]: a tool message must answer a tool call of an earlier assistant "
                                 f"message; no call has the id {m.tool_call_id[:80]!r}")
        return self


class FeedbackRequest(BaseModel):
    message_id: Id
    rating: Name
    reason: Literal[RATING_REASONS] | None = Field(None, description="why a thumbs-down")
    comment: Text | None = None
    correction: Text | None = None


class BattleRequest(BaseModel):
    prompt: Text | list[ChatMessageIn]
    adapters: tuple[Name, Name] | None = Field(None, description="admin only: the two adapters to compare")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)


class VoteRequest(BaseModel):
    winner: Name


class PromoteRequest(BaseModel):
    reason: Text = Field("", max_length=2000)


class RollbackRequest(BaseModel):
    to: Name | None = Field(None, description="adapter version or 'base'; default: the previous production")
    reason: Text = Field("", max_length=2000)


class ExperimentRequest(BaseModel):
    candidate: Name
    percent: float | None = Field(None, ge=0, le=100, strict=True)  # not true, not "50"


class LoadLoraRequest(BaseModel):
    """vLLM's ``LoadLoRAAdapterRequest``; missing fields are answered 400 as vLLM does, not 422."""

    model_config = ConfigDict(extra="ignore")  # vLLM ignores fields it does not know (e.g. load_inplace)
    lora_name: Name | None = Field(None, max_length=64)
    lora_path: Name | None = Field(None, max_length=4096)


class UnloadLoraRequest(BaseModel):
    """vLLM's ``UnloadLoRAAdapterRequest``; Tuneloop names adapters, so ``lora_int_id`` alone is refused."""

    model_config = ConfigDict(extra="ignore")
    lora_name: Name | None = Field(None, max_length=64)
    lora_int_id: int | None = None


class PublicRequest(BaseModel):
    public: bool = Field(True, description="true: every user may chat with this adapter by name")


class RetrainRequest(BaseModel):
    promote: Literal["auto", "ab", "manual"] | None = None
    wait: bool = False
    force: bool = Field(True, description="run even with fewer new examples than retrain_min_examples")


# --- auth ----------------------------------------------------------------------------------------
def _principal(request: Request) -> Principal:
    """The caller, or 401. Found once per request: ``guarded_router``'s check and the routes' dependency
    both ask, and the answer is kept on the request."""
    found = getattr(request.state, "principal", None)
    if found is None:
        found = request.state.principal = _find_principal(request)
    return found


def _find_principal(request: Request) -> Principal:
    ctx: AppContext = request.app.state.ctx
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if token and hmac.compare_digest(token.encode(), ctx.control_token.encode()):
        return Principal("cli", "admin")
    if ctx.users.single_user:
        return Principal(LOCAL_USER, "admin")
    if not token:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", code="unauthorized")
    principal = ctx.users.by_token(token)
    if principal is None:
        raise ApiError(401, "invalid token", code="unauthorized")
    return principal


def _admin(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "admin role required", code="forbidden")
    return principal


User = Annotated[Principal, Depends(_principal)]
Admin = Annotated[Principal, Depends(_admin)]


def _caller_admin(request: Request) -> Principal:
    return _admin(_principal(request))


def _checked_first(check) -> type[APIRoute]:
    """A route class that runs ``check(request)`` before FastAPI reads the body.

    FastAPI decodes a JSON body before it runs any dependency, so a router's auth dependency alone let an
    anonymous caller's malformed body be answered 422 (the decoder's words) or 400 before its 401.
    """

    class CheckedFirst(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                # On the event loop: a stat of the users file and a hash lookup (the file is read again
                # only when it changed). In a thread, every request would wait in the pool's queue twice
                # (here, then for its dependencies); they reuse this answer (``_principal``).
                check(request)
                return await handler(request)

            return checked

    return CheckedFirst


def guarded_router(admin_only: bool, prefix: str = "") -> APIRouter:
    """A router whose every route needs a signed-in caller (an admin, with ``admin_only``): checked before
    the body is read, and again as the routes' dependency, so the routes' own signature says so."""
    check, dependency = (_caller_admin, _admin) if admin_only else (_principal, _principal)
    return APIRouter(prefix=prefix, dependencies=[Depends(dependency)], route_class=_checked_first(check))


def _ctx(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(_ctx)]


def _params(ctx: AppContext, max_tokens: int | None, temperature: float | None, top_p: float | None) -> SamplingParams:
    s = ctx.settings
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=s.temperature if temperature is None else temperature,
        top_p=s.top_p if top_p is None else top_p,
    )


# --- routes --------------------------------------------------------------------------------------
public = APIRouter()
users = guarded_router(admin_only=False)
admin = guarded_router(admin_only=True, prefix="/v1/admin")
# vLLM's runtime LoRA routes, so another Tuneloop can use this one as its engine. They sit outside
# /v1/admin because the paths are vLLM's, but behind the same admin check.
engine = guarded_router(admin_only=True, prefix="/v1")


@public.get("/healthz")
def healthz(ctx: Ctx):
    # Anyone may probe it (load balancers, Docker): up or not, and which kind of backend, nothing more. The
    # details (model path on disk, adapter names, the remote engine's URL and error) are for admins.
    health = ctx.backend.health()
    return JSONResponse({"ok": bool(health.get("ok")), "backend": health.get("backend")},
                        status_code=200 if health.get("ok") else 503)


@admin.get("/health")
def admin_health(ctx: Ctx):
    """The backend's health in full, and what production really serves beside what the registry records
    (they differ when the recorded adapter could not be loaded at start-up and base is served instead)."""
    health = ctx.backend.health()
    serving = ctx.backend.resolve(PRODUCTION)
    recorded = ctx.store.production()
    health["production"] = {"recorded": recorded, "serving": serving, "in_step": serving == recorded}
    return JSONResponse(health, status_code=200 if health.get("ok") else 503)


@public.get("/metrics")
def metrics(ctx: Ctx):
    ctx.metrics.active_adapters.set(sum(1 for a in ctx.backend.list_adapters() if a.path))
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)


@users.get("/v1/models")
def list_models(ctx: Ctx, user: User):
    created = int(time.time())
    visible = set(chat_choices(ctx.store, ctx.backend, user))
    # vLLM's ``root``: the base model, often a path on this server, which only admins see (docs/security.md)
    root = ctx.backend.base_model if user.is_admin else None
    data = [
        {"id": a.name, "object": "model", "created": created, "owned_by": "tuneloop",
         "root": root, "aliases": list(a.aliases)}
        for a in ctx.backend.list_adapters() if a.name in visible
    ]
    return {"object": "list", "data": data}


@users.get("/v1/models/{model_id:path}")
def retrieve_model(model_id: str, ctx: Ctx, user: User):
    for card in list_models(ctx, user)["data"]:
        if card["id"] == model_id:
            return card
    raise ApiError(404, f"The model '{model_id}' does not exist", code="model_not_found")


@users.post("/v1/chat/completions")
def chat_completions(body: ChatCompletionRequest, ctx: Ctx, user: User):
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise BadRequest("give max_tokens or max_completion_tokens, not both")
    oa.refuse_unsupported(body.model_extra or {}, UNSUPPORTED, IGNORED)
    if body.n > ctx.settings.max_choices:
        raise BadRequest(f"n must be at most {ctx.settings.max_choices}")
    if body.n > 1 and (body.conversation_id or body.replaces):
        raise BadRequest("n > 1 starts new conversations: it cannot be combined with conversation_id or replaces")
    structured = oa.structured_output(body.response_format, body.tools, body.tool_choice)
    params = oa.with_options(
        _params(ctx, body.max_tokens or body.max_completion_tokens, body.temperature, body.top_p),
        body.stop, body.seed, structured)
    messages = [m.message() for m in body.messages]
    turns = []
    try:  # all n are submitted before any is read, so they share a batch
        for i in range(body.n):
            turns.append(ctx.chat.start(user, messages, body.model, replace(params, seed=oa.choice_seed(body.seed, i)),
                                        conversation_id=body.conversation_id, replaces=body.replaces))
    except BaseException:
        for turn in turns:  # nothing was answered: stopped, not stored
            turn.stream.close()
        raise
    base = {"id": turns[0].message_id, "created": int(time.time()), "model": body.model,
            "conversation_id": turns[0].conversation_id}
    if not body.stream:
        return oa.completion_body(base, turns)
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    return EventStream(oa.stream_events(base, turns, structured, include_usage),
                       on_disconnect=lambda: [turn.stream.cancel() for turn in turns])


@users.post("/v1/feedback")
def post_feedback(body: FeedbackRequest, ctx: Ctx, user: User):
    message = owned_message(ctx.store, user, body.message_id)  # someone else's answer: 404, as if unknown
    stored, state = review.rate(ctx, user, Rating(message_id=body.message_id, user=user.name, rating=body.rating,
                                                  reason=body.reason, comment=body.comment,
                                                  correction=body.correction))
    ctx.metrics.ratings.labels(message.adapter or "", stored.rating).inc()
    return {"ok": True, "message_id": stored.message_id, "user": stored.user, "rating": stored.rating,
            "reason": stored.reason, "comment": stored.comment, "correction": stored.correction, "review": state,
            "created_at": stored.created_at.isoformat() if stored.created_at else None}


@users.get("/v1/feedback/stats")
def feedback_stats(ctx: Ctx, user: User):
    # The team's totals are an admin's view (the Data tab): they count every user's ratings and scan the
    # whole history. A user's own conversations are at /v1/conversations.
    if not user.is_admin:
        raise ApiError(403, "feedback stats are for admins", code="forbidden")
    return ctx.store.stats(max_age_s=ctx.settings.stats_cache_ttl_s)


@users.post("/v1/arena/battles")
def create_battle(body: BattleRequest, ctx: Ctx, user: User):
    if body.adapters is not None and not user.is_admin:
        raise ApiError(403, "only an admin may choose the adapters of a battle", code="forbidden")
    prompt = body.prompt if isinstance(body.prompt, str) else [m.message() for m in body.prompt]
    params = _params(ctx, body.max_tokens, body.temperature, None)
    m, answer_a, answer_b = ctx.arena.fight(user.name, prompt, params, body.adapters)
    # No adapter names here: the battle is blind until the vote.
    return {"id": m.battle_id, "answers": [{"side": "a", "content": answer_a}, {"side": "b", "content": answer_b}]}


@users.post("/v1/arena/battles/{battle_id}/vote")
def vote_battle(battle_id: str, body: VoteRequest, ctx: Ctx, user: User):
    check_id(battle_id, "battle")
    check_battle(ctx.store, user, battle_id)
    vote = ctx.store.vote(battle_id, user.name, body.winner)
    ctx.metrics.arena_votes.labels(vote.winner).inc()
    return {"ok": True, "id": battle_id, "winner": vote.winner, "a": vote.adapter_a, "b": vote.adapter_b}


@users.get("/v1/adapters")
def list_adapters(ctx: Ctx, user: User):
    board = ctx.promoter.leaderboard()
    if user.is_admin:
        return board
    # A user sees the adapters they may chat with, without the registry's internals (runs, snapshots, gate
    # numbers): an admin-only adapter is one /v1/models and chat call unknown, so it is not listed here either.
    allowed = public_models(ctx.store)
    rows = [{k: v for k, v in row.items() if k not in ("run_id", "snapshot_id", "gate_metrics", "parent")}
            for row in board["adapters"] if row["name"] in allowed]
    pairwise = {a: {b: cell for b, cell in row.items() if b in allowed}
                for a, row in board["pairwise"].items() if a in allowed}
    return {"production": board["production"], "adapters": rows, "pairwise": pairwise}


# --- admin ---------------------------------------------------------------------------------------
@admin.post("/adapters/{name}/promote")
def promote(name: str, body: PromoteRequest, ctx: Ctx, user: Admin):
    ctx.promoter.promote(name, actor=user.name, reason=body.reason or "promoted by admin")
    return {"ok": True, "production": ctx.store.production()}


@admin.post("/adapters/rollback")
def rollback(body: RollbackRequest, ctx: Ctx, user: Admin):
    target = ctx.promoter.rollback(to=body.to, actor=user.name, reason=body.reason or "rollback by admin")
    return {"ok": True, "production": target}


@admin.post("/adapters/{name}/public")
def set_public(name: str, body: PublicRequest, ctx: Ctx, user: Admin):
    ctx.promoter.set_public(name, body.public, actor=user.name)
    return {"ok": True, "name": name, "public": body.public}


@admin.post("/adapters/{name}/archive")
def archive(name: str, ctx: Ctx, user: Admin):
    ctx.promoter.archive(name, actor=user.name)
    return {"ok": True}


@admin.get("/adapters/events")
def adapter_events(ctx: Ctx):
    return {"events": ctx.store.adapter_events()}


@admin.post("/experiments")
def start_experiment(body: ExperimentRequest, ctx: Ctx, user: Admin):
    exp = ctx.promoter.start_experiment(body.candidate, actor=user.name, percent=body.percent)
    return {"ok": True, "experiment": asdict(exp)}


@admin.post("/experiments/stop")
def stop_experiment(ctx: Ctx, user: Admin):
    ctx.promoter.stop_experiment(actor=user.name, reason="stopped by admin")
    return {"ok": True}


@admin.get("/experiments")
def experiments(ctx: Ctx):
    return {"experiments": [asdict(e) for e in ctx.store.list_experiments()]}


@admin.get("/experiments/current")
def current_experiment(ctx: Ctx):
    """The running (else the last) canary as the Adapters tab shows it: rates, evidence, ramp steps, why."""
    exp = pick_experiment(ctx.store)
    return {"report": experiment_report(ctx.store, CanaryPolicy.from_settings(ctx.settings), exp) if exp else None}


@admin.post("/retrain")
def retrain_now(body: RetrainRequest, ctx: Ctx, user: Admin):
    run = ctx.retrain.trigger(actor=user.name, trigger="manual", promote=body.promote, force=body.force,
                              wait=body.wait)
    return run


@admin.get("/runs")
def runs(ctx: Ctx):
    return {"runs": ctx.store.list_runs()}


@admin.get("/runs/{run_id}")
def run_detail(run_id: str, ctx: Ctx):
    check_id(run_id, "run")
    run = ctx.store.get_run(run_id)
    if run is None:
        raise ApiError(404, f"unknown run {run_id!r}", code="run_not_found")
    return {**run, "metrics": ctx.store.run_metrics(run_id)}


@admin.get("/export")
def export_data(ctx: Ctx, format: Literal["openai", "parquet"] = "openai", since: date | None = None,
                rated_only: bool = False):
    import shutil
    import tempfile

    from starlette.background import BackgroundTask
    from starlette.responses import FileResponse

    from feedback.export import export

    # Written in batches to a temp file, then streamed from disk in chunks: memory stays flat in the size.
    tmp = tempfile.mkdtemp(prefix="tuneloop-export-")
    try:
        name = f"tuneloop-export{'-rated' if rated_only else ''}{f'-since-{since}' if since else ''}." \
               f"{'jsonl' if format == 'openai' else 'parquet'}"
        out = Path(tmp) / name
        export(ctx.store, out, format, since=since, rated_only=rated_only)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    media = "application/jsonl" if format == "openai" else "application/vnd.apache.parquet"
    return FileResponse(out, media_type=media, filename=name,
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


# --- vLLM runtime LoRA routes ----------------------------------------------------------------------
# Status codes follow vLLM's OpenAIServingModels (what serving/remote.py expects of an engine): 400
# for a missing field, a name already loaded or an adapter that fails its checks, 404 when the path
# holds no adapter or the name is not loaded; success is plain text.
def _adapter_path(ctx: AppContext, lora_path: str) -> Path:
    """``lora_path`` resolved, if it lies inside this app's adapters dir; refused otherwise."""
    root = Path(ctx.settings.adapters_dir).resolve()
    # resolve() follows symlinks and "..", so neither can lead outside the adapters dir.
    path = Path(lora_path).resolve()
    if not path.is_relative_to(root) or path == root:
        raise ApiError(400, f"lora_path must be a directory inside this engine's adapters dir {root}",
                       code="adapter_path_refused")
    return path


@engine.post("/load_lora_adapter")
def load_lora_adapter(body: LoadLoraRequest, ctx: Ctx, user: Admin):
    if not body.lora_name or not body.lora_path:
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", code="invalid_request")
    path = _adapter_path(ctx, body.lora_path)
    if body.lora_name in RESERVED:  # listed as models, but no adapter may take their name: not "already loaded"
        raise ApiError(400, f"The lora name '{body.lora_name}' is reserved ('production' is an alias, 'base' the "
                            "bare model); load the adapter under its own name.", code="adapter_rejected")
    if body.lora_name in {a.name for a in ctx.backend.list_adapters()}:
        raise ApiError(400, f"The lora adapter '{body.lora_name}' has already been loaded.", code="invalid_request")
    if not (path / "adapter_config.json").is_file():
        raise ApiError(404, f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path}",
                       code="adapter_not_found")
    try:
        ctx.backend.load_adapter(body.lora_name, path)
    except AdapterRejected as exc:
        raise ApiError(400, str(exc), code="adapter_rejected") from exc
    log.info("adapter loaded over the engine API: %s by %s", body.lora_name, user.name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@engine.post("/unload_lora_adapter")
def unload_lora_adapter(body: UnloadLoraRequest, ctx: Ctx, user: Admin):
    if not body.lora_name:
        raise ApiError(400, "'lora_name' must be provided (adapters are unloaded by name).", code="invalid_request")
    try:
        ctx.promoter.unload(body.lora_name, actor=user.name)
    except UnknownAdapter as exc:
        raise ApiError(404, f"The lora adapter '{body.lora_name}' cannot be found.", code="model_not_found") from exc
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


def create_api(ctx: AppContext) -> FastAPI:
    app = FastAPI(title="Tuneloop", version="0.1.0", docs_url="/api/docs", redoc_url=None)
    app.state.ctx = ctx
    install_handlers(app)
    if ctx.settings.cors_origins:  # browsers read real responses only with these headers, not just preflight
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(ctx.settings.cors_origins), allow_credentials=False,
                           allow_methods=["*"], allow_headers=["*"])

    @app.middleware("http")
    async def count_errors(request: Request, call_next):
        response = await call_next(request)
        if response.status_code >= 400:
            ctx.metrics.http_errors.labels(str(response.status_code)).inc()
        return response

    from web.api_review import router as review_router  # imports this module's auth dependencies

    for router in (public, users, admin, engine, review_router):
        app.include_router(router)
    return app
