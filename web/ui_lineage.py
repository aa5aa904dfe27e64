"""The adapter lineage as a tree (each adapter under the one it was trained from) with status badges,
and a rollback from it: pick an adapter in the tree's list and make it production again."""

from __future__ import annotations

import html

import gradio as gr

from feedback.models import AdapterRecord
from serving.types import BASE
from web.context import AppContext
from web.errors import user_message
from web.format import badge, empty, when
from web.ui_common import require_admin


def _node(r: AdapterRecord | None, name: str, production: str, children: dict[str, list[AdapterRecord]]) -> str:
    status = "production" if name == production else (r.status if r else "base")
    facts = []
    if r is not None:
        if r.run_id:
            facts.append(f"run {r.run_id[:8]}")
        if r.created_at:
            facts.append(when(r.created_at))
    else:
        facts.append("the model without any adapter")
    star = " ★" if name == production else ""
    label = (f'<span class="tl-node"><b>{html.escape(name)}</b>{star} {badge(status)} '
             f'<span class="tl-muted">{html.escape(" · ".join(facts))}</span></span>')
    kids = children.get(name, [])
    inner = "<ul>" + "".join(_node(k, k.name, production, children) for k in kids) + "</ul>" if kids else ""
    return f'<li data-adapter="{html.escape(name)}">{label}{inner}</li>'


def lineage_html(records: list[AdapterRecord], production: str) -> str:
    """Base at the root; each adapter under its parent (an unknown parent hangs off the base)."""
    names = {r.name for r in records}
    children: dict[str, list[AdapterRecord]] = {}
    for r in records:
        parent = r.parent if r.parent in names else BASE
        children.setdefault(parent, []).append(r)
    tree = f'<ul class="tl-tree">{_node(None, BASE, production, children)}</ul>'
    if not records:
        return tree + empty("No adapters yet: each successful training run adds one here, under the adapter "
                            "it was trained from.")
    return tree


def build_lineage(ctx: AppContext):
    """The tree, a picker of its adapters and a rollback button; returns (load, outputs)."""
    tree = gr.HTML(elem_id="lineage-tree")
    with gr.Row(elem_classes="tl-actions"):
        target = gr.Dropdown(label="Adapter in the tree", choices=[], elem_id="lineage-pick", scale=2)
        reason = gr.Textbox(label="Why (kept in the switch log)", elem_id="lineage-reason", scale=3)
        rollback = gr.Button("Make it production (roll back)", elem_id="lineage-rollback", scale=1)
    result = gr.Markdown(elem_id="lineage-result")

    def load(request: gr.Request):
        require_admin(ctx, request)
        records = ctx.store.list_adapter_records()
        production = ctx.store.production()
        choices = [BASE, *[r.name for r in records if r.status != "archived"]]
        return lineage_html(records, production), gr.update(choices=choices)

    def roll(name: str | None, why: str, request: gr.Request):
        actor = require_admin(ctx, request).name
        if not name:
            raise gr.Error("Pick the adapter production should point at.")
        try:
            target_ = ctx.promoter.rollback(to=name, actor=actor, reason=why or "rollback from the lineage view")
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        return f"Production now points at **{target_}**."

    rollback.click(roll, [target, reason], [result]).then(load, None, [tree, target])
    return load, [tree, target]
