"""The Chat tab: streaming multi-turn chat with stop, regenerate, thumbs with reasons, comments and corrections.

The conversation and the stored id of each message live in a ``gr.State`` (the chatbot only displays
them), so a rating always names the exact stored message it is about. The conversation list beside it
(``web/ui_conversations.py``) resumes a stored conversation into that same state.
"""

from __future__ import annotations

import html
import logging
import threading
from dataclasses import dataclass

import gradio as gr

from feedback.models import ConversationView, Rating
from feedback.store_review import HELD
from feedback.text import text_problem
from serving.types import PRODUCTION, SamplingParams
from web import review
from web.access import owned_message
from web.context import AppContext
from web.errors import user_message
from web.format import REASON_LABELS
from web.ui_common import principal_of

log = logging.getLogger(__name__)

DEMO_NOTE = (
    "**Demo mode.** The model is a tiny network trained for a few seconds on this machine: its words are "
    "mostly noise until you teach it. Rate answers and correct them, then retrain (Training tab)."
)
# Gradio draws "Like" and "Dislike" as thumbs and the rest under a flag beside them: a thumbs-down with
# a reason is one click on the answer itself.
FEEDBACK_OPTIONS = ["Like", "Dislike", *REASON_LABELS.values()]
_REASON_OF = {label: code for code, label in REASON_LABELS.items()}


def display(messages: list[dict]) -> list[dict]:
    """What the chatbot shows: user text escaped, so markup in a message is shown as text, never run."""
    return [{"role": m["role"], "content": html.escape(m["content"], quote=False)}
            for m in messages if m["role"] != "system"]


def new_state(system_prompt: str) -> dict:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return {"conversation_id": None, "messages": system, "ids": [None] * len(system), "feedback": {}}


def state_from_view(view: ConversationView) -> dict:
    """A stored conversation as the chat continues it; a corrected answer shows the user's correction."""
    messages, ids, feedback = [], [], {}
    for m in view.messages:
        content = view.corrections.get(m.id, m.content) if m.role == "assistant" else m.content
        messages.append({"role": m.role, "content": content})
        ids.append(m.id)
        if m.id in view.ratings:
            rating, reason = view.ratings[m.id]
            feedback[m.id] = REASON_LABELS.get(reason) or ("Like" if rating == "up" else "Dislike")
    return {"conversation_id": view.id, "messages": messages, "ids": ids, "feedback": feedback}


def feedback_values(st: dict) -> list[str | None]:
    """One entry per assistant message, as the chatbot's ``feedback_value`` wants them."""
    return [st["feedback"].get(i) for m, i in zip(st["messages"], st["ids"], strict=True) if m["role"] == "assistant"]


def chat_view(st: dict) -> gr.Chatbot:
    return gr.Chatbot(value=display(st["messages"]), feedback_value=feedback_values(st))


def _visible_index(state: dict, index) -> int:
    """Map the chatbot's index (system prompt hidden) to the state's index; -1 for one that names no message
    (the event's data comes from the browser)."""
    index = index[0] if isinstance(index, (list, tuple)) and index else index
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return -1
    return index + sum(1 for m in state["messages"] if m["role"] == "system")


class Answering:
    """The tabs (session hashes) whose answer is being written. A tab's state is a snapshot per event, and each
    event writes back its own: a message taken, or a second answer started, while an answer is written would be
    overwritten by that answer's updates. The page lets Send be pressed again once the message shows, and a
    client calling the queue itself can run the answer twice at once."""

    def __init__(self):
        self._tabs: set[str] = set()
        self._lock = threading.Lock()

    def begin(self, tab: str) -> bool:
        with self._lock:
            if tab in self._tabs:
                return False
            self._tabs.add(tab)
            return True

    def end(self, tab: str) -> None:
        with self._lock:
            self._tabs.discard(tab)

    def __contains__(self, tab: str) -> bool:
        with self._lock:
            return tab in self._tabs


BUSY = "An answer is still being written: wait for it, or press Stop."


@dataclass
class ChatTab:
    """The Chat tab's components other parts of the UI wire to (conversation list, model pickers)."""

    state: gr.State
    chatbot: gr.Chatbot
    adapter: gr.Dropdown
    status: gr.Markdown
    turn_done: list  # events after which the conversation list should refresh


def build_chat_tab(ctx: AppContext) -> ChatTab:
    s = ctx.settings
    if s.demo:
        gr.Markdown(DEMO_NOTE, elem_id="demo-note")
    adapter = gr.Dropdown(choices=[PRODUCTION], value=PRODUCTION, label="Model", elem_id="adapter-choice",
                          allow_custom_value=False)
    state = gr.State(new_state(s.system_prompt))
    chatbot = gr.Chatbot(show_label=False, height="62vh", editable="all", elem_id="chatbot", sanitize_html=True,
                         allow_tags=False, buttons=["copy"], feedback_options=FEEDBACK_OPTIONS,
                         placeholder="**Ask anything.** Rate answers with 👍 / 👎 (the flag gives a reason), "
                                     "or edit an answer to write the one you wanted: that is how this model learns.")
    with gr.Group(visible=False, elem_id="feedback-panel") as panel:
        reason = gr.Radio([(label, code) for code, label in REASON_LABELS.items()], show_label=True,
                          label="What was wrong with this answer?", elem_id="feedback-reason")
        with gr.Row(equal_height=True):
            comment = gr.Textbox(placeholder="Add a comment (optional), Enter to send", show_label=False, scale=5,
                                 elem_id="comment")
            save_comment = gr.Button("Send", scale=0, min_width=70, elem_id="save-comment")
            close_panel = gr.Button("✕", scale=0, min_width=44, elem_id="close-feedback")
    status = gr.Markdown("", elem_id="feedback-status")
    with gr.Row(equal_height=True, elem_id="composer"):
        box = gr.Textbox(placeholder="Message (Enter sends, Shift+Enter new line, Esc stops)", show_label=False,
                         lines=1, max_lines=8, scale=8, elem_id="chat-input", autofocus=True, container=False)
        send = gr.Button("Send", variant="primary", scale=0, min_width=70, elem_id="send")
        stop = gr.Button("Stop", scale=0, min_width=70, elem_id="stop")
        regenerate = gr.Button("↻", scale=0, min_width=44, elem_id="regenerate")
    last_rated = gr.State(None)  # (message id, rating, reason) the feedback panel refers to
    answering = Answering()

    def user_turn(text: str, st: dict, request: gr.Request):
        if not isinstance(text, str) or not text.strip():
            raise gr.Error("Type a message first.")
        principal_of(ctx, request)  # signed in, and this session's own user (web/sessions.py)
        if request.session_hash in answering:  # an error: the page's box keeps the text
            raise gr.Error(BUSY)
        messages = [*st["messages"], {"role": "user", "content": text}]
        try:  # the request's bounds, before the state grows: it lives on the server
            ctx.chat.limits.check(messages)
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        st = {**st, "messages": messages, "ids": [*st["ids"], None]}
        return "", st, chat_view(st), gr.update(visible=False)

    def bot_turn(st: dict, adapter_name: str, request: gr.Request, replaces: str | None = None):
        user = principal_of(ctx, request)  # ChatService checks the adapter, conversation and replaced answer
        tab = request.session_hash
        if not answering.begin(tab):
            raise gr.Error(BUSY)
        try:  # released however the answer ends: done, failed, stopped or the page gone (Gradio closes this)
            yield from _answer(st, adapter_name, user, replaces)
        finally:
            answering.end(tab)

    def _answer(st: dict, adapter_name: str, user, replaces: str | None):
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
                # The state holds the answer as far as it is shown, with its id: on Stop, Gradio closes this
                # generator and keeps the last state yielded, which without it left the stored (cut) answer out
                # of the next message's history.
                shown = {**st, "messages": [*st["messages"], {"role": "assistant", "content": answer}],
                         "ids": [*st["ids"], turn.message_id]}
                yield shown, display(shown["messages"])
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        finally:
            deltas.close()  # on Stop, Gradio closes this generator: store what was shown
        st = {**st, "messages": [*st["messages"], {"role": "assistant", "content": turn.completion.text}],
              "ids": [*st["ids"], turn.message_id]}
        yield st, chat_view(st)

    def regenerate_last(st: dict, adapter_name: str, request: gr.Request):
        principal_of(ctx, request)
        if not st["messages"] or st["messages"][-1]["role"] != "assistant":
            raise gr.Error("There is no answer to regenerate.")
        replaced = st["ids"][-1]
        st = {**st, "messages": st["messages"][:-1], "ids": st["ids"][:-1]}
        yield from bot_turn(st, adapter_name, request, replaces=replaced)

    def _store(st: dict, message_id: str, value: str, why: str | None, text: str | None, request) -> dict:
        if text and (problem := text_problem(text)):
            raise gr.Error(f"The comment {problem}.")
        try:
            who = principal_of(ctx, request)
            owned_message(ctx.store, who, message_id)  # the state is the server's, but check as the API does
            _, review_state = review.rate(ctx, who, Rating(message_id=message_id, user=who.name, rating=value,
                                                           reason=why, comment=text))
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        shown = REASON_LABELS.get(why) or ("Like" if value == "up" else "Dislike")
        # Any held state (an answer an admin set aside stays so): it teaches only once an admin includes it.
        return {**st, "feedback": {**st["feedback"], message_id: shown}, "pending": review_state in HELD}

    def rate(st: dict, data: gr.LikeData, request: gr.Request):
        i = _visible_index(st, data.index)
        if not 0 <= i < len(st["ids"]) or st["ids"][i] is None or st["messages"][i]["role"] != "assistant":
            return st, gr.update(), None, gr.update(), gr.update(), gr.update()
        liked = data.liked
        if liked is True or liked == "Like":
            value, why = "up", None
        elif liked is False or liked == "Dislike":
            value, why = "down", None
        elif liked in _REASON_OF:
            value, why = "down", _REASON_OF[liked]
        else:  # an un-click (Gradio sends the option again) or anything unknown: nothing to store
            return st, gr.update(), None, gr.update(), gr.update(), gr.update()
        message_id = st["ids"][i]
        st = _store(st, message_id, value, why, None, request)
        said = "👍" if value == "up" else f"👎 ({REASON_LABELS[why]})" if why else "👎"
        waits = " It waits for an admin's review before it can teach the model." if st.get("pending") else ""
        return (st, f"Saved your {said}.{waits}", (message_id, value, why), gr.update(visible=True),
                gr.update(visible=value == "down", value=why), gr.update(value=""))

    def pick_reason(why: str | None, rated, st: dict, request: gr.Request):
        if not rated or not why:
            return st, gr.update(), rated
        message_id, _value, _old = rated
        st = _store(st, message_id, "down", why, None, request)
        return st, f"Saved your 👎 ({REASON_LABELS[why]}).", (message_id, "down", why)

    def add_comment(text: str, rated, st: dict, request: gr.Request):
        if not rated:
            raise gr.Error("Rate an answer first, then add a comment to it.")
        message_id, value, why = rated
        st = _store(st, message_id, value, why, text.strip() or None, request)
        return st, "", "Thanks: feedback saved.", gr.update(visible=False)

    def edit(st: dict, data: gr.EditData, request: gr.Request):
        who = principal_of(ctx, request)
        i = _visible_index(st, data.index)
        if not 0 <= i < len(st["messages"]) or st["messages"][i]["role"] != "assistant" or st["ids"][i] is None:
            return st, chat_view(st), "Only answers can be edited: write the answer you wanted."
        new_text = data.value if isinstance(data.value, str) else str(data.value)
        if problem := text_problem(new_text):
            return st, chat_view(st), f"The correction {problem}: remove it and edit again."
        try:
            owned_message(ctx.store, who, st["ids"][i])
            _, state = review.rate(ctx, who, Rating(message_id=st["ids"][i], user=who.name, rating="down",
                                                    correction=new_text))
        except Exception as exc:
            return st, chat_view(st), user_message(exc)
        messages = list(st["messages"])
        messages[i] = {"role": "assistant", "content": new_text}
        st = {**st, "messages": messages, "feedback": {**st["feedback"], st["ids"][i]: "Dislike"}}
        if state in HELD:
            return st, chat_view(st), "Correction saved: it waits for an admin's review before it teaches the model."
        return st, chat_view(st), "Correction saved: it will be used to teach the model."

    turn_done = []
    cancel = []
    for trigger in (box.submit, send.click):
        event = trigger(user_turn, [box, state], [box, state, chatbot, panel]).then(
            bot_turn, [state, adapter], [state, chatbot])
        cancel.append(event)
        turn_done.append(event)
    for trigger in (regenerate.click, chatbot.retry):
        event = trigger(regenerate_last, [state, adapter], [state, chatbot])
        cancel.append(event)
        turn_done.append(event)
    stop.click(None, cancels=cancel)
    chatbot.like(rate, [state], [state, status, last_rated, panel, reason, comment])
    reason.input(pick_reason, [reason, last_rated, state], [state, status, last_rated])
    for trigger in (save_comment.click, comment.submit):
        trigger(add_comment, [comment, last_rated, state], [state, comment, status, panel])
    close_panel.click(lambda: gr.update(visible=False), None, [panel])
    chatbot.edit(edit, [state], [state, chatbot, status])
    return ChatTab(state=state, chatbot=chatbot, adapter=adapter, status=status, turn_done=turn_done)
