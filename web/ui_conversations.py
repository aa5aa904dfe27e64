"""The conversation sidebar: New chat, the signed-in user's conversations (newest first, searchable),
resume, rename and delete. The open conversation's id is kept in the page URL (``?c=<id>``), so a
reload, a bookmark or the back button reopens it; the store checks that it is the user's own."""

from __future__ import annotations

import logging

import gradio as gr

from feedback.text import text_problem
from web.context import AppContext
from web.errors import user_message
from web.ui_chat import ChatTab, chat_view, new_state, state_from_view
from web.ui_common import principal_of

log = logging.getLogger(__name__)

LIST_SIZE = 50
# Keeps the URL's ?c= in step with the open conversation without reloading the page.
SET_URL_JS = """(id) => {
  const u = new URL(window.location.href);
  if (id) { u.searchParams.set('c', id); } else { u.searchParams.delete('c'); }
  if (u.href !== window.location.href) { window.history.replaceState(null, '', u.href); }
  return [];
}"""
READ_URL_JS = "(c, q) => [new URLSearchParams(window.location.search).get('c') || '', q]"


def build_sidebar():
    """The sidebar's components (call inside a ``gr.Sidebar``); wire them with ``wire_sidebar``."""
    new_chat = gr.Button("+ New chat", variant="primary", elem_id="new-chat")
    # The open conversation's id on the page (a State never reaches the browser), for the URL.
    current = gr.Textbox(visible="hidden", elem_id="conv-current")
    search = gr.Textbox(placeholder="Search your chats", show_label=False, elem_id="conv-search", container=False)
    listing = gr.Radio(choices=[], show_label=False, elem_id="conv-list", container=False)
    empty = gr.Markdown("Your conversations will be listed here.", elem_id="conv-empty")
    with gr.Accordion("Rename or delete this chat", open=False, elem_id="conv-manage"):
        title = gr.Textbox(label="Title", elem_id="conv-title", max_length=200)
        rename = gr.Button("Rename", elem_id="conv-rename", size="sm")
        forget = gr.Checkbox(label="Also erase it from the training data", value=False, elem_id="conv-forget")
        delete = gr.Button("Delete chat", variant="stop", elem_id="conv-delete", size="sm")
    note = gr.Markdown("", elem_id="conv-note")
    return dict(current=current, new_chat=new_chat, search=search, listing=listing, empty=empty, title=title, rename=rename,
                forget=forget, delete=delete, note=note)


def wire_sidebar(ctx: AppContext, ui: gr.Blocks, bar: dict, chat: ChatTab, tabs: gr.Tabs) -> None:
    system_prompt = ctx.settings.system_prompt
    listing, title = bar["listing"], bar["title"]

    def listed(request: gr.Request, query: str = "", current: str | None = None):
        user = principal_of(ctx, request).name
        rows = ctx.store.list_conversations(user, query=query or None, limit=LIST_SIZE)
        choices = [(c.title, c.id) for c in rows]
        value = current if current in {c.id for c in rows} else None
        hint = ("No chats match your search." if query else "Your conversations will be listed here.")
        return gr.update(choices=choices, value=value), gr.update(value=hint, visible=not rows)

    def fresh():
        st = new_state(system_prompt)
        return st, chat_view(st), ""

    def open_conversation(cid: str, query: str, request: gr.Request):
        """Resume ``cid`` (or start fresh when it is empty or not this user's)."""
        note, st, shown_title = "", None, ""
        user = principal_of(ctx, request).name
        if cid:
            try:
                view = ctx.store.load_conversation(user, cid)
                st, shown_title = state_from_view(view), view.title
            except Exception as exc:
                # Not the store's words: they would repeat the id, which comes from the address bar (a link
                # anyone can craft) into Markdown.
                note = "That conversation could not be opened: it does not exist or is not yours."
                log.info("conversation %r not opened for %s: %s", cid[:80], user, exc)
        if st is None:
            st = new_state(system_prompt)
        lst, hint = listed(request, query, st["conversation_id"])
        return st, chat_view(st), lst, hint, shown_title, note, gr.Tabs(selected="chat"), st["conversation_id"] or ""

    def new_chat(query: str, request: gr.Request):
        st, view, _ = fresh()
        lst, hint = listed(request, query, None)
        return st, view, lst, hint, "", "", gr.Tabs(selected="chat"), ""

    def after_turn(st: dict, query: str, request: gr.Request):
        lst, hint = listed(request, query, st.get("conversation_id"))
        return lst, hint, st.get("conversation_id") or ""

    def do_rename(st: dict, text: str, query: str, request: gr.Request):
        cid = st.get("conversation_id")
        if not cid:
            raise gr.Error("Send a message first: a new chat has nothing to rename yet.")
        try:
            shown = ctx.store.rename_conversation(principal_of(ctx, request).name, cid, text)
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        lst, hint = listed(request, query, cid)
        return lst, hint, shown, "Renamed."

    def do_delete(st: dict, forget: bool, query: str, request: gr.Request):
        cid = st.get("conversation_id")
        if not cid:
            raise gr.Error("This chat is not saved yet: there is nothing to delete.")
        try:
            ctx.store.delete_conversation(principal_of(ctx, request).name, cid, forget=forget)
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        st, view, _ = fresh()
        lst, hint = listed(request, query, None)
        said = "Chat deleted and erased from the training data." if forget else (
            "Chat deleted. Its rated answers still help train the model (tick the box to erase them too).")
        return st, view, lst, hint, "", said, False, ""

    def do_search(query: str, st: dict, request: gr.Request):
        if problem := text_problem(query or ""):
            raise gr.Error(f"Search text {problem}.")
        return listed(request, query, st.get("conversation_id"))

    opened = [chat.state, chat.chatbot, listing, bar["empty"], title, bar["note"], tabs, bar["current"]]
    ui.load(open_conversation, [gr.Textbox(visible=False), bar["search"]], opened, js=READ_URL_JS).then(
        None, [bar["current"]], None, js=SET_URL_JS)
    listing.input(open_conversation, [listing, bar["search"]], opened).then(None, [bar["current"]], None, js=SET_URL_JS)
    for trigger in (bar["new_chat"].click, chat.chatbot.clear):  # the chatbot's own trash button starts afresh too
        trigger(new_chat, [bar["search"]], opened).then(None, [bar["current"]], None, js=SET_URL_JS)
    for event in chat.turn_done:
        event.then(after_turn, [chat.state, bar["search"]], [listing, bar["empty"], bar["current"]]).then(
            None, [bar["current"]], None, js=SET_URL_JS)
    bar["search"].change(do_search, [bar["search"], chat.state], [listing, bar["empty"]], show_progress="hidden")
    bar["rename"].click(do_rename, [chat.state, title, bar["search"]], [listing, bar["empty"], title, bar["note"]])
    for trigger in (title.submit,):
        trigger(do_rename, [chat.state, title, bar["search"]], [listing, bar["empty"], title, bar["note"]])
    bar["delete"].click(do_delete, [chat.state, bar["forget"], bar["search"]],
                        [chat.state, chat.chatbot, listing, bar["empty"], title, bar["note"], bar["forget"],
                         bar["current"]]).then(
        None, [bar["current"]], None, js=SET_URL_JS)
