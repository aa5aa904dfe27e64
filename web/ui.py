"""The Gradio app: Chat and Arena for everyone, Data, Training and Adapters for admins.

Admin tabs are hidden from users, and every admin handler also checks the role on the server.
"""

from __future__ import annotations

import gradio as gr

from web.access import chat_choices
from web.context import AppContext
from web.ui_admin import build_adapters_tab, build_data_tab, build_training_tab
from web.ui_api import add_api_endpoints
from web.ui_arena import build_arena_tab
from web.ui_chat import build_chat_tab
from web.ui_common import adapter_choices, principal_of


def build_ui(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Tuneloop") as ui:
        who = gr.Markdown("", elem_id="whoami")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                _refresh, adapter = build_chat_tab(ctx)
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
            choices = adapter_choices(ctx.backend)  # the arena pickers: admins only
            admin = gr.update(visible=p.is_admin)
            return (f"Signed in as **{p.name}** ({p.role})",
                    gr.update(choices=chat_choices(ctx.store, ctx.backend, p)), admin, admin, admin,
                    gr.update(visible=p.is_admin), gr.update(choices=choices), gr.update(choices=choices))

        ui.load(on_load, None, [who, adapter, data_tab, training_tab, adapters_tab, picker, pick_a, pick_b])
        data_tab.select(data_load, data_in, data_out)
        training_tab.select(train_load, train_in, train_out)
        adapters_tab.select(adapters_load, None, adapters_out)
        add_api_endpoints(ctx, ui)
    return ui
