"""The Gradio API that ``gradio_client`` may call: chat, rate and correct, as plain typed functions.

The UI's own events take Gradio state and event data (``gr.LikeData``) that a client cannot send (the old
``/rate`` failed with "'NoneType' object is not subscriptable"), so they are made private, and these are
the public endpoints. The same principal, store and chat service as the UI and the HTTP API.
"""

from __future__ import annotations

import gradio as gr

from feedback.models import Rating
from feedback.text import text_problem
from serving.types import PRODUCTION, SamplingParams
from web import review
from web.access import owned_message
from web.context import AppContext
from web.errors import user_message
from web.ui_common import principal_of


def add_api_endpoints(ctx: AppContext, ui: gr.Blocks) -> None:
    """Hide every UI event from the API, then add the public endpoints; call inside ``with ui:``."""
    for fn in ui.fns.values():
        fn.api_visibility = "private"
        if isinstance(fn.api_name, str):  # frees "rate" etc. for the public endpoints (else "rate_1")
            fn.api_name = f"ui_{fn.api_name}"
    s = ctx.settings

    def chat(message: str, history: list[dict] | None = None, model: str = PRODUCTION,
             conversation_id: str | None = None, request: gr.Request = None) -> dict:
        """Answer ``message`` after ``history`` (OpenAI messages); returns the answer and its stored id."""
        user = principal_of(ctx, request)  # ChatService checks the model, conversation and request size
        if not isinstance(message, str) or not message.strip():
            raise gr.Error("message must be non-empty text")
        messages = [_history_message(i, m) for i, m in enumerate(history or [])]
        messages.append({"role": "user", "content": message})
        try:
            turn = ctx.chat.complete(user, messages, model or PRODUCTION,
                                     SamplingParams(temperature=s.temperature, top_p=s.top_p),
                                     conversation_id=conversation_id or None)
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        c = turn.completion
        return {"answer": c.text, "message_id": turn.message_id, "conversation_id": turn.conversation_id,
                "adapter": c.adapter, "finish_reason": c.finish_reason}

    def rate(message_id: str, rating: str, comment: str | None = None, request: gr.Request = None) -> dict:
        """Rate a stored answer ``up`` or ``down``, with an optional comment."""
        return _rate(message_id, rating, comment, None, request)

    def correct(message_id: str, correction: str, request: gr.Request = None) -> dict:
        """Give the answer you wanted instead of a stored one (a thumbs-down with a correction)."""
        return _rate(message_id, "down", None, correction, request)

    def _rate(message_id, rating, comment, correction, request) -> dict:
        # The same rules as POST /v1/feedback: one's own answers only, untrusted feedback to the review queue.
        for name, value in (("message_id", message_id), ("rating", rating), ("comment", comment),
                            ("correction", correction)):
            _check_text(name, value, optional=name in ("comment", "correction"))
        try:
            user = principal_of(ctx, request)
            owned_message(ctx.store, user, message_id)
            stored, state = review.rate(ctx, user, Rating(message_id=message_id, user=user.name, rating=rating,
                                                          comment=comment or None, correction=correction))
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        return {"ok": True, "message_id": stored.message_id, "rating": stored.rating,
                "comment": stored.comment, "correction": stored.correction, "review": state}

    gr.api(chat, api_name="chat")
    gr.api(rate, api_name="rate")
    gr.api(correct, api_name="correct")


def _check_text(name: str, value, optional: bool = False) -> None:
    """The HTTP API's text checks (``feedback.text``), answered as a gr.Error naming the field."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise gr.Error(f"{name} must be text")
    problem = text_problem(value)
    if problem:
        raise gr.Error(f"{name} {problem}")


def _history_message(i: int, m) -> dict:
    """One history message as the HTTP API takes it: an object; a ``tool`` result names the call it answers."""
    if not isinstance(m, dict):
        raise gr.Error(f"history[{i}] must be an object with role and content")
    out = {"role": m.get("role"), "content": m.get("content")}
    if m.get("role") == "tool":
        call = m.get("tool_call_id")
        if not isinstance(call, str) or not call or len(call) > 200:
            raise gr.Error(f"history[{i}]: a tool message needs the tool_call_id it answers "
                           "(1 to 200 characters)")
        _check_text(f"history[{i}].tool_call_id", call)
        out["tool_call_id"] = call
    return out
