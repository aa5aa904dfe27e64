"""Helpers the UI tabs share: who is asking, the admin check, adapter choices."""

from __future__ import annotations

import gradio as gr

from serving.types import BASE, PRODUCTION
from web.auth import LOCAL_USER, Principal
from web.context import AppContext


def principal_of(ctx: AppContext, request: gr.Request | None) -> Principal:
    """The logged-in user; in single-user mode everyone is the local admin."""
    name = getattr(request, "username", None) if request is not None else None
    if ctx.users.single_user:
        return Principal(LOCAL_USER, "admin")
    principal = ctx.users.principal(name) if name else None
    if principal is None:
        raise gr.Error("Please log in.")
    session_hash = getattr(request, "session_hash", None)
    if session_hash and not ctx.sessions.claim(session_hash, principal.name):
        raise gr.Error("This chat belongs to another sign-in: reload the page.")
    return principal


def require_admin(ctx: AppContext, request: gr.Request | None) -> Principal:
    """Checked in every admin handler on the server, not only by hiding the tab."""
    principal = principal_of(ctx, request)
    if not principal.is_admin:
        raise gr.Error("Admin role required.")
    return principal


def adapter_choices(backend) -> list[str]:
    names = [a.name for a in backend.list_adapters() if a.name not in (PRODUCTION, BASE)]
    return [PRODUCTION, BASE, *sorted(names)]


def labeled_adapter_choices(ctx: AppContext, names: list[str] | None = None) -> list[tuple[str, str]]:
    """(label, name) pairs for model pickers: each label says what the choice is.

    ``names``: the choices to label (production and base first, as ``adapter_choices`` gives them);
    default every adapter the backend serves.
    """
    production = ctx.store.production()
    status = {r.name: r.status for r in ctx.store.list_adapter_records()}
    choices = [(f"Production (now {production})", PRODUCTION), ("Base model, no adapter", BASE)]
    for name in (names or adapter_choices(ctx.backend))[2:]:
        kind = "in production" if name == production else status.get(name, "loaded")
        choices.append((f"{name} · {kind}", name))
    return choices
