"""The Chat tab: streaming multi-turn chat with stop, regenerate, clear, thumbs, comments and corrections.

The conversation and the stored id of each message live in a ``gr.State`` (the chatbot only displays
them), so a rating always names the exact stored message it is about.
"""

from __future__ import annotations

import html
import logging

import gradio as gr

from feedback.models import Rating
from serving.types import PRODUCTION, SamplingParams
from web import review
from web.access import chat_choices, owned_message
from web.context import AppContext
from web.errors import user_message
from web.ui_common import principal_of

log = logging.getLogger(__name__)

DEMO_NOTE = (
    "**Demo mode.** The model is a tiny network trained for a few seconds on this machine: its words are "
    "mostly noise until you teach it. Rate answers and correct them, then retrain (Training tab)."
)


def display(messages: list[dict]) -> list[dict]:
    """What the chatbot shows: user text escaped, so markup in a message is shown as text, never run."""
    return [{"role": m["role"], "content": html.escape(m["content"], quote=False)}
            for m in messages if m["role"] != "system"]


def new_state(system_prompt: str) -> dict:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return {"conversation_id": None, "messages": system, "ids": [None] * len(system)}


def _visible_index(state: dict, index) -> int:
    """Map the chatbot's index (system prompt hidden) to the state's index."""
    index = index[0] if isinstance(index, (list, tuple)) else index
    offset = sum(1 for m in state["messages"] if m["role"] == "system")
    return int(index) + offset


def build_chat_tab(ctx: AppContext) -> None:
    s = ctx.settings
    if s.demo:
        gr.Markdown(DEMO_NOTE, elem_id="demo-note")
    with gr.Row():
        adapter = gr.Dropdown(choices=[PRODUCTION], value=PRODUCTION, label="Adapter", scale=1,
                              elem_id="adapter-choice", allow_custom_value=False)
    state = gr.State(new_state(s.system_prompt))
    chatbot = gr.Chatbot(label="Chat", height=460, editable="all", elem_id="chatbot", sanitize_html=True,
                         allow_tags=False, buttons=["copy"])
    with gr.Row():
        box = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=6,
                         elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", scale=1, elem_id="stop")
    with gr.Row():
        regenerate = gr.Button("Regenerate", elem_id="regenerate")
        clear = gr.Button("Clear", elem_id="clear")
    with gr.Row():
        comment = gr.Textbox(placeholder="Optional comment on your last rating", show_label=False, scale=5,
                             elem_id="comment")
        save_comment = gr.Button("Save comment", scale=1, elem_id="save-comment")
    status = gr.Markdown("", elem_id="feedback-status")
    last_rated = gr.State(None)  # (message id, rating) the comment box refers to

    def refresh_adapters(request: gr.Request):
        return gr.update(choices=chat_choices(ctx.store, ctx.backend, principal_of(ctx, request)))

    def user_turn(text: str, st: dict):
        if not text.strip():
            raise gr.Error("Type a message first.")
        st = {**st, "messages": [*st["messages"], {"role": "user", "content": text}], "ids": [*st["ids"], None]}
        return "", st, display(st["messages"])

    def bot_turn(st: dict, adapter_name: str, request: gr.Request, replaces: str | None = None):
        user = principal_of(ctx, request)  # ChatService checks the adapter, conversation and replaced answer
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p)
        try:
            turn = ctx.chat.start(user, st["messages"], adapter_name or PRODUCTION, params,
                                  conversation_id=st["conversation_id"], replaces=replaces)
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        st = {**st, "conversation_id": turn.conversation_id}
        answer = ""
        deltas = turn.deltas()
        try:
            for delta in deltas:
                answer += delta
                shown = [*st["messages"], {"role": "assistant", "content": answer}]
                yield st, display(shown)
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        finally:
            deltas.close()  # on Stop, Gradio closes this generator: store what was shown
        st = {**st, "messages": [*st["messages"], {"role": "assistant", "content": turn.completion.text}],
              "ids": [*st["ids"], turn.message_id]}
        yield st, display(st["messages"])

    def regenerate_last(st: dict, adapter_name: str, request: gr.Request):
        if not st["messages"] or st["messages"][-1]["role"] != "assistant":
            raise gr.Error("There is no answer to regenerate.")
        replaced = st["ids"][-1]
        st = {**st, "messages": st["messages"][:-1], "ids": st["ids"][:-1]}
        yield from bot_turn(st, adapter_name, request, replaces=replaced)

    def rate(st: dict, data: gr.LikeData, request: gr.Request):
        i = _visible_index(st, data.index)
        if i >= len(st["ids"]) or st["ids"][i] is None or data.liked not in (True, False):
            return gr.update(), None
        value = "up" if data.liked else "down"
        try:
            who = principal_of(ctx, request)
            owned_message(ctx.store, who, st["ids"][i])  # the state is the server's, but check as the API does
            _, state = review.rate(ctx, who, Rating(message_id=st["ids"][i], user=who.name, rating=value))
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        waits = " It waits for an admin's review before it can teach the model." if state == "pending_review" else ""
        return f"Saved your {'👍' if value == 'up' else '👎'}.{waits}", (st["ids"][i], value)

    def add_comment(text: str, rated, request: gr.Request):
        if not rated:
            raise gr.Error("Rate an answer first, then add a comment to it.")
        message_id, value = rated
        try:
            who = principal_of(ctx, request)
            owned_message(ctx.store, who, message_id)
            review.rate(ctx, who, Rating(message_id=message_id, user=who.name, rating=value,
                                         comment=text.strip() or None))
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        return "", "Comment saved."

    def edit(st: dict, data: gr.EditData, request: gr.Request):
        i = _visible_index(st, data.index)
        if i >= len(st["messages"]) or st["messages"][i]["role"] != "assistant" or st["ids"][i] is None:
            return st, display(st["messages"]), "Only answers can be edited: write the answer you wanted."
        new_text = data.value if isinstance(data.value, str) else str(data.value)
        if "\x00" in new_text:
            return st, display(st["messages"]), "The correction holds a NUL character; remove it."
        try:
            who = principal_of(ctx, request)
            owned_message(ctx.store, who, st["ids"][i])
            _, state = review.rate(ctx, who, Rating(message_id=st["ids"][i], user=who.name, rating="down",
                                                    correction=new_text))
        except Exception as exc:
            return st, display(st["messages"]), user_message(exc)
        messages = list(st["messages"])
        messages[i] = {"role": "assistant", "content": new_text}
        st = {**st, "messages": messages}
        if state == "pending_review":
            return st, display(messages), "Correction saved: it waits for an admin's review before it teaches the model."
        return st, display(messages), "Correction saved: it will be used to teach the model."

    def reset():
        st = new_state(s.system_prompt)
        return st, [], ""

    submit_events = [
        trigger(user_turn, [box, state], [box, state, chatbot]).then(bot_turn, [state, adapter], [state, chatbot])
        for trigger in (box.submit, send.click)
    ]
    regen_events = [regenerate.click(regenerate_last, [state, adapter], [state, chatbot]),
                    chatbot.retry(regenerate_last, [state, adapter], [state, chatbot])]
    stop.click(None, cancels=[*submit_events, *regen_events])
    clear.click(reset, None, [state, chatbot, status])
    chatbot.clear(reset, None, [state, chatbot, status])  # the chatbot's own trash button
    chatbot.like(rate, [state], [status, last_rated])
    save_comment.click(add_comment, [comment, last_rated], [comment, status])
    chatbot.edit(edit, [state], [state, chatbot, status])
    return refresh_adapters, adapter
