"""The one renderer of conversations: serving asks with it and training sets are built with it,
so what the model is trained on and what it is asked cannot drift apart."""

from __future__ import annotations

from serving.types import Message


def render_prompt(tokenizer, messages: list[Message]) -> str:
    """The prompt text for ``messages`` with the assistant's turn opened (the model answers next)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_completion(tokenizer, messages: list[Message], answer: str) -> str:
    """The text the model should produce after ``render_prompt(messages)``: the answer and its end-of-turn.

    Derived from the template itself (full conversation minus prompt), so any template's end-of-turn
    marker is included without knowing it.
    """
    prompt = render_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False, add_generation_prompt=False
    )
    if not full.startswith(prompt):
        # Some templates rewrite earlier turns once an answer follows; fall back to answer + eos.
        return answer + (tokenizer.eos_token or "")
    return full[len(prompt):]
