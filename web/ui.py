"""The Gradio app: a conversation sidebar, Chat and Arena for everyone, Data, Training and Adapters for admins.

Admin tabs are hidden from users, and every admin handler also checks the role on the server.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from web.access import chat_choices
from web.context import AppContext
from web.ui_admin import build_adapters_tab, build_data_tab, build_training_tab
from web.ui_api import add_api_endpoints
from web.ui_arena import build_arena_tab
from web.ui_chat import build_chat_tab
from web.ui_common import labeled_adapter_choices, principal_of
from web.ui_conversations import build_sidebar, wire_sidebar

STATIC = Path(__file__).parent / "static"


def page_assets() -> dict:
    """CSS and JS for ``mount_gradio_app``: the look, the narrow-screen layout and Esc to stop."""
    return {"css": (STATIC / "tuneloop.css").read_text(encoding="utf-8"),
            "js": (STATIC / "tuneloop.js").read_text(encoding="utf-8")}


def build_ui(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Tuneloop") as ui:
        with gr.Sidebar(open=True, width=280, elem_id="conv-sidebar"):
            gr.Markdown("### Tuneloop")
            bar = build_sidebar()
            who = gr.Markdown("", elem_id="whoami")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = build_chat_tab(ctx)
            with gr.Tab("Arena", id="arena"):
                picker, pick_a, pick_b = build_arena_tab(ctx)
            with gr.Tab("Data", id="data", visible=False) as data_tab:
                data_load, data_in, data_out = build_data_tab(ctx)
            with gr.Tab("Training", id="training", visible=False) as training_tab:
                train_load, train_in, train_out = build_training_tab(ctx)
            with gr.Tab("Adapters", id="adapters", visible=False) as adapters_tab:
                adapters_load, _, adapters_out = build_adapters_tab(ctx)

        def on_load(request: gr.Request):
            p = principal_of(ctx, request)
            choices = labeled_adapter_choices(ctx) if p.is_admin else []  # the arena pickers: admins only
            admin = gr.update(visible=p.is_admin)
            sign_out = "" if ctx.users.single_user else " · [Sign out](/logout)"
            return (f"Signed in as **{p.name}** ({p.role}){sign_out}",
                    gr.update(choices=labeled_adapter_choices(ctx, chat_choices(ctx.store, ctx.backend, p))),
                    admin, admin, admin, gr.update(visible=p.is_admin), gr.update(choices=choices),
                    gr.update(choices=choices))

        ui.load(on_load, None, [who, chat.adapter, data_tab, training_tab, adapters_tab, picker, pick_a, pick_b])
        wire_sidebar(ctx, ui, bar, chat, tabs)
        data_tab.select(data_load, data_in, data_out)
        training_tab.select(train_load, train_in, train_out)
        adapters_tab.select(adapters_load, None, adapters_out)
        add_api_endpoints(ctx, ui)
    # Every event without its own limit: Gradio's default of 1 ran one user's chat answer at a time for everyone.
    ui.queue(default_concurrency_limit=ctx.settings.ui_concurrency)
    return ui
