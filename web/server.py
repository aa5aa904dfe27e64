"""One ASGI app: the HTTP API with the Gradio UI mounted at ``/``."""

from __future__ import annotations

import re

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Mount

from web.api import create_api
from web.context import AppContext
from web.errors import error_body
from web.guard import RequestGuard
from web.net import is_loopback
from web.ui import build_ui, page_assets

UI_PATH = "/"
# Gradio's routes that name a session by its hash: its event stream, heartbeat and media streams.
_SESSION_ROUTE = re.compile(r"/gradio_api/(?:queue/data$|heartbeat/([^/]+)$|stream/([^/]+)/)")


class OpenBindRefused(SystemExit):
    pass


def refuse_open_bind(settings, users) -> None:
    """With no users configured anyone who can reach the port is admin, so only loopback is allowed."""
    if users.single_user and not is_loopback(settings.host):
        raise OpenBindRefused(
            f"refusing to listen on {settings.host}: no users are configured, so anyone reaching the port would "
            f"be admin. Add one with `python app.py users add NAME --role admin`, or bind to 127.0.0.1."
        )


AUTH_MESSAGE = ("Sign in to Tuneloop with the name and password your admin gave you. A wrong name or password "
                "says <b>Incorrect credentials</b>: check both, or ask the admin to reset it with "
                "<code>python app.py users add NAME</code>.")


def create_app(ctx: AppContext) -> FastAPI:
    api = create_api(ctx)
    users = ctx.users
    # A full URL as root_path is used verbatim, so the page's links never come from the Host header.
    app = gr.mount_gradio_app(api, build_ui(ctx), path=UI_PATH, auth=users.check_password,
                              root_path=ctx.settings.public_url or None, auth_message=AUTH_MESSAGE, show_error=True,
                              footer_links=[], **page_assets())
    ui_app = next(r.app for r in api.routes if isinstance(r, Mount) and r.path == UI_PATH.rstrip("/"))

    @api.middleware("http")
    async def live_login(request, call_next):
        # Gradio reads ``auth`` on each request: with no users (single-user mode) the UI is open; the moment
        # the first user is added (the users file is re-read when it changes) it asks for a login, no restart.
        ui_app.auth = None if users.single_user else users.check_password
        if not users.single_user and not _own_session(request):
            return JSONResponse(error_body(403, "forbidden", "this session belongs to another sign-in"),
                                status_code=403)
        return await call_next(request)

    def _own_session(request) -> bool:
        """False when a route keyed by a session hash is asked for by a user other than the hash's owner
        (web/sessions.py). Reads Gradio's login cookie as its ``/user`` route does."""
        m = _SESSION_ROUTE.search(request.url.path)  # under a public_url with a path too
        session_hash = m and (m.group(1) or m.group(2) or request.query_params.get("session_hash"))
        owner = session_hash and ctx.sessions.owner(session_hash)
        if not owner:
            return True
        cookie = (request.cookies.get(f"access-token-{ui_app.cookie_id}")
                  or request.cookies.get(f"access-token-unsecure-{ui_app.cookie_id}"))
        return ui_app.tokens.get(cookie) == owner

    # Outermost: host check, fail-closed auth mode and the body limit run before routing, parsing and auth.
    app.add_middleware(RequestGuard, settings=ctx.settings, users=users, metrics=ctx.metrics)
    return app
