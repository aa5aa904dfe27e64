"""The review panel of the Data tab: rated answers waiting for an admin (untrusted users' corrections),
retried after a rejected run, or set aside (needs review), each with its reason in words; include or
discard them one by one or all shown at once. Every handler checks the role on the server.

Include approves what the table showed: each row's ``version`` goes with its id, so a row judged again
after it was shown is not included (the admin is told which, and the table shows them anew). Ids pasted
in must be among the rows shown."""

from __future__ import annotations

import json
import re

import gradio as gr
import pandas as pd

from feedback.store_review import LIST_STATES, MAX_IDS, RowsChanged
from web.context import AppContext
from web.errors import user_message
from web.ui_common import require_admin

# "origin": who wrote the answer (model, constrained = forced by the request, client = the user wrote it).
COLUMNS = ["message_id", "state", "user", "context", "prompt", "answer", "origin", "correction", "rating", "reason",
           "rejections", "last_run", "actor", "rated_at", "version"]
CONTEXT_CHARS = 600  # per earlier message in the table; the API (GET /v1/admin/data/review) has them whole
SHOWN = ("pending_review", "retrying", "needs_review")  # what asks for an admin's attention; the rest on request
PAGE = 200


def _ids(text: str) -> list[str]:
    return [i for i in re.split(r"[\s,;]+", text or "") if i]


def _shown_versions(shown) -> dict[str, str]:
    """{message id: version} of the rows the table shows (what the admin read)."""
    if shown is None or not len(shown):
        return {}
    frame = pd.DataFrame(shown)
    if "version" not in frame or "message_id" not in frame:
        return {}
    return {str(i): str(v) for i, v in zip(frame["message_id"], frame["version"], strict=True) if i and v}


def context_text(messages: list[dict]) -> str:
    """The turns before the question, one per line with its role ("" when the question came alone)."""
    lines = []
    for m in messages:
        text = m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
        if m.get("tool_calls"):
            text = f"{text or ''} [tool calls: {json.dumps(m['tool_calls'])}]".strip()
        cut = text if len(text or "") <= CONTEXT_CHARS else text[:CONTEXT_CHARS] + f"… (+{len(text) - CONTEXT_CHARS} chars)"
        lines.append(f"{m.get('role')}: {cut}")
    return "\n".join(lines)


def build_review_panel(ctx: AppContext):
    """Build the panel inside the current layout; returns (load, inputs, outputs) for the tab's refresh."""
    gr.Markdown("### Review queue")
    counts = gr.Markdown("", elem_id="review-counts")
    with gr.Row():
        state = gr.Dropdown(["attention", *LIST_STATES, "all"], value="attention", label="State",
                            elem_id="review-state")
        user = gr.Textbox(label="User", elem_id="review-user")
        show = gr.Button("Show", elem_id="review-show")
    table = gr.Dataframe(headers=COLUMNS, label="Rated answers and their review state", interactive=False,
                         wrap=True, elem_id="review-table")
    with gr.Row():
        ids = gr.Textbox(label="Message ids (blank: every row shown)", elem_id="review-ids", scale=3)
        reason = gr.Textbox(label="Reason", elem_id="review-reason", scale=2)
    with gr.Row():
        include = gr.Button("Include (train as trusted)", variant="primary", elem_id="review-include")
        discard = gr.Button("Discard", variant="stop", elem_id="review-discard")
    result = gr.Markdown("", elem_id="review-result")

    def load(chosen, who, request: gr.Request):
        require_admin(ctx, request)
        try:
            states = SHOWN if chosen == "attention" else [None if chosen == "all" else chosen]
            rows = []
            for s in states:
                rows += ctx.store.review_rows(state=s, user=who or None, limit=PAGE)[0]
            n = ctx.store.review_counts()
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        summary = " · ".join(f"{k.replace('_', ' ')}: **{v}**" for k, v in n.items())
        frame = pd.DataFrame([{**r, "context": context_text(r.get("context") or [])} for r in rows], columns=COLUMNS)
        return summary, frame

    def act(kind):
        def handler(text, why, shown, request: gr.Request):
            actor = require_admin(ctx, request).name
            versions = _shown_versions(shown)
            chosen = _ids(text) or list(versions)
            if not chosen:
                raise gr.Error("No rows: show some, or paste message ids.")
            if kind == "include":
                unseen = [i for i in chosen if i not in versions]
                if unseen:
                    raise gr.Error(f"Include the rows you read: {unseen[0]} is not among the rows shown. "
                                   "Show it first.")
            changed: list[str] = []
            try:
                n = 0
                for start in range(0, len(chosen), MAX_IDS):
                    batch = chosen[start:start + MAX_IDS]
                    if kind == "include":
                        n += _include(batch, versions, actor, why, changed)
                    else:
                        n += ctx.store.discard_rows(batch, actor=actor, reason=why)
            except Exception as exc:
                raise gr.Error(user_message(exc)) from None
            done = f"{n} rated answers {'included: they train next run' if kind == 'include' else 'discarded'}."
            if changed:
                done += (f" Not included, judged again after they were shown ({len(changed)}): "
                         f"{', '.join(changed[:20])}{' …' if len(changed) > 20 else ''}. Read them again below.")
            return "", done
        return handler

    def _include(batch, versions, actor, why, changed) -> int:
        """Include ``batch`` as shown; rows changed since are left out (added to ``changed``), the rest included."""
        while batch:  # a row can change again between tries; each try leaves out at least one more
            try:
                return ctx.store.include_rows(batch, actor=actor, reason=why, versions=versions)
            except RowsChanged as exc:
                changed += exc.ids
                gone = set(exc.ids)
                batch = [i for i in batch if i not in gone]
        return 0

    inputs, outputs = [state, user], [counts, table]
    show.click(load, inputs, outputs)
    state.input(load, inputs, outputs)
    for button, kind in ((include, "include"), (discard, "discard")):
        button.click(act(kind), [ids, reason, table], [ids, result]).then(load, inputs, outputs)
    return load, inputs, outputs
