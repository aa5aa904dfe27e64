"""The review panel of the Data tab: rated answers waiting for an admin (untrusted users' corrections),
retried after a rejected run, or set aside (needs review), each with its reason in words; include or
discard them one by one or all shown at once. Every handler checks the role on the server."""

from __future__ import annotations

import re

import gradio as gr
import pandas as pd

from feedback.store_review import LIST_STATES, MAX_IDS
from web.context import AppContext
from web.errors import user_message
from web.ui_common import require_admin

# "origin": who wrote the answer (model, constrained = forced by the request, client = the user wrote it).
COLUMNS = ["message_id", "state", "user", "prompt", "answer", "origin", "correction", "rating", "reason", "rejections",
           "last_run", "actor", "rated_at"]
SHOWN = ("pending_review", "retrying", "needs_review")  # what asks for an admin's attention; the rest on request
PAGE = 200


def _ids(text: str) -> list[str]:
    return [i for i in re.split(r"[\s,;]+", text or "") if i]


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
        frame = pd.DataFrame(rows, columns=COLUMNS)
        return summary, frame

    def act(kind):
        def handler(text, why, shown, request: gr.Request):
            actor = require_admin(ctx, request).name
            chosen = _ids(text)
            if not chosen and shown is not None and len(shown):
                chosen = [str(i) for i in pd.DataFrame(shown)["message_id"].tolist() if i]
            if not chosen:
                raise gr.Error("No rows: show some, or paste message ids.")
            try:
                n = 0
                for start in range(0, len(chosen), MAX_IDS):
                    batch = chosen[start:start + MAX_IDS]
                    if kind == "include":
                        n += ctx.store.include_rows(batch, actor=actor, reason=why)
                    else:
                        n += ctx.store.discard_rows(batch, actor=actor, reason=why)
            except Exception as exc:
                raise gr.Error(user_message(exc)) from None
            return "", f"{n} rated answers {'included: they train next run' if kind == 'include' else 'discarded'}."
        return handler

    inputs, outputs = [state, user], [counts, table]
    show.click(load, inputs, outputs)
    state.input(load, inputs, outputs)
    for button, kind in ((include, "include"), (discard, "discard")):
        button.click(act(kind), [ids, reason, table], [ids, result]).then(load, inputs, outputs)
    return load, inputs, outputs
