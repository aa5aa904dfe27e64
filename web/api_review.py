"""Admin routes of the review queue: list rated answers by state, include or discard them in bulk,
and set a user's trust. Behind the same admin check as every /v1/admin route."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from feedback.store_review import LIST_STATES, MAX_IDS
from web.api import Admin, Ctx, Text, _admin
from web.errors import ApiError

router = APIRouter(prefix="/v1/admin/data", dependencies=[Depends(_admin)])
MAX_PAGE = 500


class RowsRequest(BaseModel):
    # max_length bounds the list before the store sees it; the store checks it again (CLI, UI).
    message_ids: list[Text] = Field(..., min_length=1, max_length=MAX_IDS)
    reason: Text = Field("", max_length=2000)


class TrustRequest(BaseModel):
    trusted: bool


@router.get("/review")
def list_review(ctx: Ctx, state: str | None = None, user: str | None = Query(None, max_length=128),
                limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0, le=10**9)):
    if state is not None and state not in (*LIST_STATES, "all"):
        raise ApiError(400, f"state must be one of {', '.join(LIST_STATES)} or all", code="invalid_review")
    rows, total = ctx.store.review_rows(state=None if state in (None, "all") else state, user=user, limit=limit,
                                        offset=offset)
    return {"rows": rows, "total": total, "limit": limit, "offset": offset, "counts": ctx.store.review_counts()}


def _decide(ctx, action: Literal["include", "discard"], body: RowsRequest, actor: str) -> dict:
    if action == "include":
        n = ctx.store.include_rows(body.message_ids, actor=actor, reason=body.reason)
    else:
        n = ctx.store.discard_rows(body.message_ids, actor=actor, reason=body.reason)
    return {"ok": True, "action": action, "updated": n}


@router.post("/include")
def include(body: RowsRequest, ctx: Ctx, user: Admin):
    return _decide(ctx, "include", body, user.name)


@router.post("/discard")
def discard(body: RowsRequest, ctx: Ctx, user: Admin):
    return _decide(ctx, "discard", body, user.name)


@router.get("/trust")
def list_trust(ctx: Ctx):
    return {"users": ctx.store.list_user_trust()}


@router.put("/trust/{name}")
def set_trust(name: str, body: TrustRequest, ctx: Ctx, user: Admin):
    if ctx.users.principal(name) is None:
        raise ApiError(404, f"unknown user {name!r}", code="user_not_found")
    ctx.store.set_user_trust(name, body.trusted, actor=user.name)
    return {"ok": True, "user": name, "trusted": body.trusted}
