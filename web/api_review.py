"""Admin routes of the review queue: list rated answers by state, include or discard them in bulk,
and set a user's trust (a revocation takes back that user's trusted answers not yet trained: they wait
for an admin again). Behind the same admin check as every /v1/admin route.

An include approves what the admin read, not what a row holds by the time the call lands: each listed
row carries a ``version``, and an include names the version of each row it approves (``versions``). A
row judged again since answers 409 (``changed``: its ids) and nothing is approved. Ids sent without a
version take the one this server last showed the same admin in a listing (so ``python app.py data
list`` then ``data include`` works); an id never shown to that admin answers 422.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool

from feedback.store_review import LIST_STATES, MAX_IDS, RowsChanged, VersionRequired
from web.api import Admin, Ctx, Id, Name, Text, guarded_router
from web.errors import ApiError, error_body

router = guarded_router(admin_only=True, prefix="/v1/admin/data")
MAX_PAGE = 500


class RowsRequest(BaseModel):
    # max_length bounds the list before the store sees it; the store checks it again (CLI, UI).
    message_ids: list[Text] = Field(..., min_length=1, max_length=MAX_IDS)
    reason: Text = Field("", max_length=2000)


class IncludeRequest(RowsRequest):
    versions: dict[Id, Annotated[Name, Field(max_length=64)]] = Field(default_factory=dict, max_length=MAX_IDS,
                                                                   description="message id -> the version "
                                                                   "the review listing showed for it")


class TrustRequest(BaseModel):
    trusted: StrictBool  # "yes", 1 or "true" is a client bug, not a decision about trust


class ShownVersions:
    """The version of each row this server last listed to each admin, the newest ``MAX_SHOWN`` per admin:
    what an include without versions may approve."""

    MAX_SHOWN = 20_000

    def __init__(self):
        self._lock = threading.Lock()
        self._by_admin: dict[str, OrderedDict[str, str]] = {}

    def note(self, admin: str, rows: list[dict]) -> None:
        with self._lock:
            seen = self._by_admin.setdefault(admin, OrderedDict())
            for r in rows:
                seen[r["message_id"]] = r["version"]
                seen.move_to_end(r["message_id"])
            while len(seen) > self.MAX_SHOWN:
                seen.popitem(last=False)

    def versions(self, admin: str, ids: list[str]) -> dict[str, str]:
        with self._lock:
            seen = self._by_admin.get(admin, {})
            return {i: seen[i] for i in ids if i in seen}


_SHOWN_LOCK = threading.Lock()


def _shown(request: Request) -> ShownVersions:
    """This app's ShownVersions (one per app, made on first use)."""
    state = request.app.state
    with _SHOWN_LOCK:
        if getattr(state, "review_shown", None) is None:
            state.review_shown = ShownVersions()
        return state.review_shown


Shown = Annotated[ShownVersions, Depends(_shown)]


@router.get("/review")
def list_review(ctx: Ctx, user: Admin, shown: Shown, state: str | None = None,
                who: str | None = Query(None, alias="user", max_length=128),
                limit: int = Query(50, ge=1, le=MAX_PAGE), offset: int = Query(0, ge=0, le=10**9)):
    if state is not None and state not in (*LIST_STATES, "all"):
        raise ApiError(400, f"state must be one of {', '.join(LIST_STATES)} or all", code="invalid_review")
    rows, total = ctx.store.review_rows(state=None if state in (None, "all") else state, user=who, limit=limit,
                                        offset=offset)
    shown.note(user.name, rows)
    return {"rows": rows, "total": total, "limit": limit, "offset": offset, "counts": ctx.store.review_counts()}


@router.post("/include")
def include(body: IncludeRequest, ctx: Ctx, user: Admin, shown: Shown):
    unknown = set(body.versions) - set(body.message_ids)
    if unknown:
        raise ApiError(422, f"versions names {len(unknown)} id(s) not in message_ids, e.g. {min(unknown)!r}",
                       code="invalid_request")
    versions = {**shown.versions(user.name, body.message_ids), **body.versions}
    try:
        n = ctx.store.include_rows(body.message_ids, actor=user.name, reason=body.reason, versions=versions)
    except VersionRequired as exc:
        raise ApiError(422, f"{len(exc.ids)} row(s) were never listed to you, e.g. {exc.ids[0]!r}: an include "
                       "approves what you read, so send each row's version from GET /v1/admin/data/review "
                       "(versions: {message_id: version}), or list the rows first", code="version_required") from None
    except RowsChanged as exc:
        message = (f"{len(exc.ids)} row(s) were judged again after you read them; nothing was included. "
                   "List them again, read them, and include with the new versions")
        return JSONResponse({**error_body(409, "review_changed", message), "changed": exc.ids}, status_code=409)
    return {"ok": True, "action": "include", "updated": n}


@router.post("/discard")
def discard(body: RowsRequest, ctx: Ctx, user: Admin):
    # No versions: discarding holds a row back whatever it says, and a later judgement cannot undo it.
    n = ctx.store.discard_rows(body.message_ids, actor=user.name, reason=body.reason)
    return {"ok": True, "action": "discard", "updated": n}


@router.get("/trust")
def list_trust(ctx: Ctx):
    return {"users": ctx.store.list_user_trust()}


@router.put("/trust/{name}")
def set_trust(name: str, body: TrustRequest, ctx: Ctx, user: Admin):
    """Set ``name``'s trust. A revocation takes back what the trust let through and has not trained yet:
    ``requeued`` says how many rated answers went back to the review queue (or to capped training)."""
    principal = ctx.users.principal(name)
    if principal is None:
        raise ApiError(404, f"unknown user {name!r}", code="user_not_found")
    n = ctx.store.set_user_trust(name, body.trusted, actor=user.name, admin=principal.is_admin,
                                 review_untrusted=ctx.settings.review_untrusted)
    return {"ok": True, "user": name, "trusted": body.trusted, "requeued": n}
