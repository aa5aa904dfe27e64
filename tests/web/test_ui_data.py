"""The admin's Data tab: its rated-answers table, built by the tab's own handler from a real store."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from feedback.models import Rating
from feedback.store import FeedbackStore
from tests.feedback.feedback_helpers import assistant, make_turn, user
from web.ui_admin import build_data_tab


def test_the_rated_table_shows_where_each_answer_came_from(tmp_path):
    """An answer the client wrote into its history reads "client", a forced one "constrained", the model's
    own "model": the admin sees which ratings judge text the model never chose."""
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    try:
        turn = make_turn("c1", [user("capital of France?"), assistant("Berlin, says the client."), user("sure?")],
                         "Yes.", origin="constrained")
        store.record_turn(turn)
        forged = next(m.id for m in store.conversation("c1") if m.content == "Berlin, says the client.")
        free = make_turn("c2", [user("hi")], "Hello from the model.")
        store.record_turn(free)
        for mid in (forged, turn.assistant_message_id, free.assistant_message_id):
            store.rate(Rating(message_id=mid, user="local", rating="up"), trust="trusted")
        ctx = SimpleNamespace(store=store, users=SimpleNamespace(single_user=True),
                              settings=SimpleNamespace(stats_cache_ttl_s=0))
        with gr.Blocks():
            load, _inputs, _outputs = build_data_tab(ctx)
        table = load("", "any", "", "", "any", 1, None)[-1]
    finally:
        store.close()
    head, body = table.split("</thead>")
    assert "<th>Origin</th>" in head
    rows = {row.split("</td>")[4].removeprefix("<td>"): row.split("</td>")[5].removeprefix("<td>")
            for row in body.split("<tr>")[1:]}
    assert rows == {"Berlin, says the client.": "client", "Yes.": "constrained", "Hello from the model.": "model"}
