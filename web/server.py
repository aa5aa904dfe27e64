"""One ASGI app: the HTTP API with the Gradio UI mounted at ``/``."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from web.api import create_api
from web.context import AppContext
from web.guard import RequestGuard
from web.net import is_loopback
from web.ui import build_ui

UI_PATH = "/"


class OpenBindRefused(SystemExit):
    pass


def refuse_open_bind(settings, users) -> None:
    """With no users configured anyone who can reach the port is admin, so only loopback is allowed."""
    if users.single_user and not is_loopback(settings.host):
        raise OpenBindRefused(
            f"refusing to listen on {settings.host}: no users are configured, so anyone reaching the port would "
            f"be admin. Add one with `python app.py users add NAME --role admin`, or bind to 127.0.0.1."
        )


def create_app(ctx: AppContext) -> FastAPI:
    api = create_api(ctx)
    users = ctx.users
    auth = None if users.single_user else users.check_password
    # A full URL as root_path is used verbatim, so the page's links never come from the Host header.
    app = gr.mount_gradio_app(api, build_ui(ctx), path=UI_PATH, auth=auth, root_path=ctx.settings.public_url or None,
                              auth_message="Sign in to Tuneloop", show_error=True, footer_links=[])
    # Outermost: host check, fail-closed auth mode and the body limit run before routing, parsing and auth.
    app.add_middleware(RequestGuard, settings=ctx.settings, users=users, metrics=ctx.metrics)
    return app
