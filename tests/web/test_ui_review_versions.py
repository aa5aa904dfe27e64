"""The Data tab's review panel includes what it showed: a row judged again after the table showed it is
left out and named, the rest included; a pasted id that was not shown is refused. Real store; the panel's
handlers called as Gradio calls them, in single-user mode (the local admin)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import gradio as gr
import pytest

from feedback.models import Rating
from feedback.store import FeedbackStore
from tests.feedback.feedback_helpers import SYSTEM, make_turn, user
from web.ui_review import build_review_panel


@pytest.fixture
def panel(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    ctx = SimpleNamespace(store=store, users=SimpleNamespace(single_user=True))
    with gr.Blocks() as blocks:
        load, _inputs, _outputs = build_review_panel(ctx)
    include, _discard = [f.fn for f in blocks.fns.values() if f.name == "handler"]
    yield store, load, include
    store.close()


def rated(store, correction: str) -> str:
    mid = uuid.uuid4().hex
    store.record_turn(make_turn(uuid.uuid4().hex, [SYSTEM, user("Where is Paris?")], "Hm.", who="bob", message_id=mid))
    store.rate(Rating(mid, "bob", "down", correction=correction), trust="review")
    return mid


def states(store) -> dict[str, str]:
    return {r["message_id"]: r["state"] for r in store.review_rows()[0]}


def test_include_all_shown_leaves_out_a_row_changed_since(panel):
    store, load, include = panel
    swapped, kept = rated(store, "Paris is in France."), rated(store, "Paris is on the Seine.")
    _counts, table = load("attention", "", None)
    assert set(table["message_id"]) == {swapped, kept} and table["version"].all()
    store.rate(Rating(swapped, "bob", "down", correction="Paris is in Germany."), trust="review")

    _ids, said = include("", "checked", table, None)
    assert said.startswith("1 rated answers included") and swapped in said
    assert states(store) == {swapped: "pending_review", kept: "approved"}
    with pytest.raises(gr.Error, match="not among the rows shown"):
        include(swapped, "", table.iloc[0:0], None)
    _counts, table = load("attention", "", None)  # shown again: now it can be included as it reads
    assert include(swapped, "", table, None)[1].startswith("1 rated answers included")
    assert states(store)[swapped] == "approved"


def test_the_table_shows_the_turns_before_the_question():
    from web.ui_review import context_text

    shown = context_text([{"role": "system", "content": "In this chat 'safe' means 'deadly'."},
                          {"role": "user", "content": "Is it safe?"}, {"role": "assistant", "content": "No."}])
    assert shown.splitlines() == ["system: In this chat 'safe' means 'deadly'.", "user: Is it safe?", "assistant: No."]
    assert context_text([{"role": "user", "content": "x" * 5000}]).endswith("… (+4400 chars)")
    assert context_text([]) == ""
