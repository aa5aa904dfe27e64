"""The one place where core exceptions become HTTP statuses and user-facing messages."""

from __future__ import annotations

import logging
import re

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from feedback import errors as fe
from retrain.promotion import PromotionError
from serving import errors as se
from web.arena import TooManyBattles
from web.auth import AuthError, UsersUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error raised at the edge itself (auth, role, not found)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


# Most specific first: the first matching class decides the status.
_STATUS: list[tuple[type[Exception], int, str]] = [
    (se.PromptTooLong, 400, "context_length_exceeded"),
    (se.RequestTooLarge, 400, "request_too_large"),
    (se.MaxTokensTooLarge, 400, "max_tokens_exceeded"),
    (se.BadRequest, 400, "invalid_request"),
    (se.UnknownAdapter, 404, "model_not_found"),
    (se.AdapterRejected, 422, "adapter_rejected"),
    (se.AdapterInUse, 409, "adapter_in_use"),
    (se.BackendUnavailable, 503, "backend_unavailable"),
    (se.ModelUnavailable, 503, "model_unavailable"),
    (fe.UnknownMessage, 404, "message_not_found"),
    (fe.UnknownConversation, 404, "conversation_not_found"),
    (fe.UnknownBattle, 404, "battle_not_found"),
    (fe.UnknownRun, 404, "run_not_found"),
    (fe.ReservedName, 409, "reserved_name"),
    (fe.InvalidTitle, 422, "invalid_title"),
    (fe.SchemaTooNew, 500, "schema_too_new"),
    (fe.AlreadyVoted, 409, "already_voted"),
    (fe.BattleClosed, 409, "battle_closed"),
    (fe.NotAssistantMessage, 422, "not_assistant_message"),
    (fe.InvalidRating, 422, "invalid_feedback"),
    (fe.InvalidReview, 400, "invalid_review"),
    (PromotionError, 409, "conflict"),
    (AuthError, 400, "invalid_user"),
    (UsersUnavailable, 503, "users_unavailable"),
    (TooManyBattles, 429, "too_many_battles"),
]
# Validation errors of these kinds (web.api's Text, Name and Id) answer 400 (bad characters), not 422.
BAD_CHARACTERS = ("nul_character", "control_characters", "invalid_id")
# pydantic names the member of a union it tried ("function-after[_no_nul(), ...]", "list[...]", "str") in an
# error's loc; that is no place in the request, so it is left out of ``param``.
_UNION_MEMBER = re.compile(r"[\w-]*\[.*\]|str|int|float|bool|bytes|none", re.S)


def field_path(loc) -> str:
    """The field an error's ``loc`` points at, as a client wrote it ("stop.0", "messages.1.role")."""
    return ".".join(str(p) for p in loc[1 if loc[:1] == ("body",) else 0:]
                    if not (isinstance(p, str) and _UNION_MEMBER.fullmatch(p)))


def _plain(error: dict) -> str:
    """An error's message without pydantic's wording for a raised ValueError or a generic length check."""
    ctx = error.get("ctx") or {}
    if error.get("type") == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if error.get("type") in ("too_long", "too_short") and isinstance(error.get("input"), str):
        bound = "at most" if error["type"] == "too_long" else "at least"
        limit = ctx.get("max_length", ctx.get("min_length"))
        return f"should have {bound} {limit} characters, not {len(error['input'])}"
    return error.get("msg", "invalid request")


def classify(exc: Exception) -> tuple[int, str, str]:
    """(HTTP status, error code, message) for a core exception; 500 for anything unexpected."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code or exc.type, exc.message
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            return status, code, str(exc)
    return 500, "internal_error", "internal error; see the server log"


def user_message(exc: Exception) -> str:
    """A message for the UI: the core's own words for known errors, never a stack trace."""
    status, _code, message = classify(exc)
    if status == 500:
        log.exception("unexpected error", exc_info=exc)
    return message


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def install_handlers(app) -> None:
    """Register OpenAI-style JSON error responses on a FastAPI app."""

    async def core_error(request: Request, exc: Exception) -> JSONResponse:
        status, code, message = classify(exc)
        if status >= 500:
            log.error("request %s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body(status, code, message), status_code=status)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":  # its loc is an offset into the body, no field
            where, why = errors[0].get("loc", ("?",))[-1], (errors[0].get("ctx") or {}).get("error", "decode error")
            message = f"request body is not valid JSON: {why} (at position {where})"
            return JSONResponse(error_body(422, "invalid_request", message), status_code=422)
        # Of a union's failed members, the one that got furthest says what was wrong ("stop.0" over "stop").
        first = max(errors, key=lambda e: len(field_path(e.get("loc", ())).split(".")), default={})
        loc = field_path(first.get("loc", ()))
        message = f"{loc}: {_plain(first)}" if loc else _plain(first)
        if first.get("type") in BAD_CHARACTERS:
            return JSONResponse(error_body(400, first["type"], message, loc or None), status_code=400)
        return JSONResponse(error_body(422, "invalid_request", message, loc or None), status_code=422)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Routing errors (unknown path, wrong method) in the same shape as every other error.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    for cls in (ApiError, se.ServingError, fe.FeedbackError, PromotionError, AuthError, UsersUnavailable, TooManyBattles,
                Exception):
        app.add_exception_handler(cls, core_error)
