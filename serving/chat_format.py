"""The one renderer of conversations: serving asks with it and training sets are built with it,
so what the model is trained on and what it is asked cannot drift apart."""

from __future__ import annotations

from serving.errors import BadRequest
from serving.types import Message


def _check_tool_support(tokenizer, messages: list[Message], tools: list[dict] | None) -> None:
    """A template that never mentions tools would drop them silently: refuse instead (400).

    Jinja templates cannot be asked what they support; every template that renders tools (Qwen, Llama 3,
    Mistral, Hermes, ours) reads the ``tools`` variable and ``tool_calls``, so their absence is the sign.
    """
    uses_tools = bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    if not uses_tools:
        return
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else str(tokenizer.chat_template or "")
    needed = ["tools"] if tools else []
    if any(m.get("tool_calls") for m in messages):
        needed.append("tool_calls")
    missing = [n for n in needed if n not in template]
    if any(m.get("role") == "tool" for m in messages) and "tool" not in template:
        missing.append("tool messages")
    if missing:
        raise BadRequest(f"this model's chat template does not support tools (it does not render: {', '.join(missing)})")


def render_prompt(tokenizer, messages: list[Message], tools: list[dict] | None = None) -> str:
    """The prompt text for ``messages`` with the assistant's turn opened (the model answers next)."""
    _check_tool_support(tokenizer, messages, tools)
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


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
