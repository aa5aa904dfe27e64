"""The Arena tab: one prompt, two anonymous answers streamed side by side, a vote, then the names."""

from __future__ import annotations

import queue
import threading

import gradio as gr

from serving.types import SamplingParams
from web.access import check_battle
from web.context import AppContext
from web.errors import user_message
from web.ui_chat import display
from web.ui_common import principal_of, require_admin

WINNERS = {"A is better": "a", "B is better": "b", "Tie": "tie", "Both are bad": "both_bad"}


def _merge(streams):
    """Yield (side, delta) from two streams as they arrive, so both answers grow at once."""
    q: queue.Queue = queue.Queue()

    def pump(side, stream):
        try:
            for delta in stream:
                q.put((side, delta, None))
        except Exception as exc:
            q.put((side, None, exc))
        finally:
            q.put((side, None, None))

    for side, stream in streams.items():
        threading.Thread(target=pump, args=(side, stream), daemon=True).start()
    done = 0
    while done < len(streams):
        side, delta, exc = q.get()
        if exc is not None:
            raise exc
        if delta is None:
            done += 1
        else:
            yield side, delta


def battle_updates(ctx: AppContext, user: str, text: str, chosen: tuple[str, str] | None = None):
    """The Compare button's updates, (battle id, answer A, answer B, reveal), as both answers grow.

    One of ``user``'s arena slots is held until the battle ends. A side that fails stops the other (half a
    battle cannot be voted on); every error reaches the page in the shared words of ``user_message``.
    """
    s = ctx.settings
    try:
        with ctx.arena.slot(user):
            messages = ctx.arena.messages_for(text)
            m = ctx.arena.matchup(chosen)
            params = SamplingParams(temperature=s.temperature, top_p=s.top_p)
            streams = ctx.arena.open_streams(messages, m, params)
            answers = {"a": "", "b": ""}
            shown = [m_ for m_ in messages if m_["role"] != "system"]

            def view(side):
                return display([*shown, {"role": "assistant", "content": answers[side]}])

            try:
                for side, delta in _merge(streams):
                    answers[side] += delta
                    yield None, view("a"), view("b"), ""
            finally:  # a side failed, or the page went away: neither stream goes on generating
                for stream in streams.values():
                    stream.cancel()
            ctx.arena.record(user, m, messages, answers["a"], answers["b"])
            yield m.battle_id, view("a"), view("b"), "Which answer is better?"
    except Exception as exc:
        raise gr.Error(user_message(exc)) from None


def build_arena_tab(ctx: AppContext):
    gr.Markdown("Ask one question and compare two anonymous answers. The names appear after you vote.")
    battle = gr.State(None)
    with gr.Row(visible=False) as picker:
        pick_a = gr.Dropdown(label="First adapter (admin)", choices=[], elem_id="arena-pick-a")
        pick_b = gr.Dropdown(label="Second adapter (admin)", choices=[], elem_id="arena-pick-b")
    prompt = gr.Textbox(placeholder="Your question", show_label=False, elem_id="arena-prompt")
    go = gr.Button("Compare", variant="primary", elem_id="arena-go")
    with gr.Row():
        answer_a = gr.Chatbot(label="Answer A", height=300, elem_id="arena-a", sanitize_html=True, allow_tags=False,
                              feedback_options=None)
        answer_b = gr.Chatbot(label="Answer B", height=300, elem_id="arena-b", sanitize_html=True, allow_tags=False,
                              feedback_options=None)
    with gr.Row():
        vote_buttons = [gr.Button(label, elem_id=f"vote-{code}") for label, code in WINNERS.items()]
    reveal = gr.Markdown("", elem_id="arena-reveal")

    def fight(text: str, a_name: str | None, b_name: str | None, request: gr.Request):
        user = principal_of(ctx, request)
        chosen = None
        if a_name and b_name:
            require_admin(ctx, request)
            chosen = (a_name, b_name)
        yield from battle_updates(ctx, user.name, text, chosen)

    def vote(battle_id: str | None, label: str, request: gr.Request):
        if not battle_id:
            raise gr.Error("Start a comparison first.")
        try:
            user = principal_of(ctx, request)
            check_battle(ctx.store, user, battle_id)
            v = ctx.store.vote(battle_id, user.name, WINNERS[label])
        except Exception as exc:
            raise gr.Error(user_message(exc)) from None
        return f"Thanks! **A** was `{v.adapter_a}`, **B** was `{v.adapter_b}`."

    # Bounded by each user's arena slots (ArenaService.slot), not by Gradio's default of one run of an event at
    # a time for everyone: with it, one user's slow battle held up every other user's.
    go.click(fight, [prompt, pick_a, pick_b], [battle, answer_a, answer_b, reveal], concurrency_limit=None)
    prompt.submit(fight, [prompt, pick_a, pick_b], [battle, answer_a, answer_b, reveal], concurrency_limit=None)
    for button, label in zip(vote_buttons, WINNERS, strict=True):
        button.click(vote, [battle, gr.State(label)], [reveal])
    return picker, pick_a, pick_b
