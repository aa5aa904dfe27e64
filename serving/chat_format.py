"""The one renderer of conversations: serving asks with it and training sets are built with it,
so what the model is trained on and what it is asked cannot drift apart."""

from __future__ import annotations

import re
from functools import lru_cache

from serving.errors import BadRequest, UnescapableControlToken
from serving.types import Message

# Inserted after the first character of a control-token string found in message text, so the tokenizer reads
# it as plain text ("<", ZWSP, "|im_end|>") instead of the control token: a user cannot end their turn early or
# forge a system or assistant turn, in what the model is asked or, through a correction, in what it is trained
# on. Only what the model sees changes; stored text and what the user reads stay as written. Invisible and
# meaningless, so the model still reads roughly what was typed. Done on the text, not at tokenization
# (transformers' ``apply_chat_template(sanitize_control_tokens=True)``), because TRL tokenizes the rendered
# training strings itself with a plain tokenizer call, and serving must see exactly what training sees.
_BREAK = "\u200b"


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


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The special-token strings of ``tokenizer`` (``all_special_tokens`` and every added token marked special):
    wherever they appear in text, the tokenizer reads them as control tokens.

    Non-special added tokens are left alone, unlike transformers' ``sanitize_control_tokens``, which also takes
    those the template writes: they are part of the model's ordinary answers (Qwen3's ``<think>`` and
    ``</think>``, Qwen's ``<tool_call>``), which are stored and trained on as written, and templates parse them
    out of message content (Qwen3 drops earlier reasoning by splitting on ``</think>``); escaping them would
    teach the model to write them as plain text. Turns are opened and closed by special tokens.
    """
    found = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    found.update(tokenizer.all_special_tokens)
    return tuple(sorted(t for t in found if t))


@lru_cache(maxsize=16)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern:
    # Longest first, so a token wins over a shorter one it contains.
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)) or "(?!)")


def escape_control_tokens(tokenizer, value):
    """``value`` (a string, or messages/tools: lists and dicts of them) with every control-token string in its
    text broken so it tokenizes as plain text; a copy, the input is not changed. Text without one is returned
    unchanged, so ordinary conversations render exactly as before."""
    tokens = control_tokens(tokenizer)
    pattern = _pattern(tokens)
    changed: list[str] = []

    def walk(v):
        if isinstance(v, str):
            if not pattern.search(v):
                return v
            out = v
            for _ in range(4):  # a break could expose a token hidden inside a longer one; a few passes settle it
                out = pattern.sub(lambda m: m[0][0] + _BREAK + m[0][1:], out)
                if not pattern.search(out):
                    break
            changed.append(out)
            return out
        if isinstance(v, dict):
            # Keys too: templates render tools with ``tojson``, so a schema's property names reach the prompt.
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    out = walk(value)
    if changed:
        _check_escaped(tokenizer, tokens, changed)
    return out


def _check_escaped(tokenizer, tokens: tuple[str, ...], texts: list[str]) -> None:
    # The tokenizer is the judge: a normalizer that drops zero-width characters would undo the break, and a
    # one-character control token cannot be broken. Refuse then; only text that held a control token pays this.
    ids = {i for i in tokenizer.convert_tokens_to_ids(list(tokens)) if i is not None}
    for text in texts:
        if ids.intersection(tokenizer(text, add_special_tokens=False)["input_ids"]):
            raise UnescapableControlToken(
                "the text contains a control token of this model's chat format that cannot be written as plain text"
            )


def render_prompt(tokenizer, messages: list[Message], tools: list[dict] | None = None) -> str:
    """The prompt text for ``messages`` with the assistant's turn opened (the model answers next).

    Control-token strings inside messages and tools are escaped (``escape_control_tokens``): only the
    template writes control tokens.
    """
    _check_tool_support(tokenizer, messages, tools)
    kwargs = {"tools": escape_control_tokens(tokenizer, tools)} if tools else {}
    return tokenizer.apply_chat_template(
        escape_control_tokens(tokenizer, messages), tokenize=False, add_generation_prompt=True, **kwargs
    )


def render_completion(tokenizer, messages: list[Message], answer: str) -> str:
    """The text the model should produce after ``render_prompt(messages)``: the answer and its end-of-turn.

    Derived from the template itself (full conversation minus prompt), so any template's end-of-turn
    marker is included without knowing it.
    """
    prompt = render_prompt(tokenizer, messages)
    # The answer is user text too (a correction becomes a training target): escaped like the messages.
    answer = escape_control_tokens(tokenizer, answer)
    full = tokenizer.apply_chat_template(
        [*escape_control_tokens(tokenizer, messages), {"role": "assistant", "content": answer}],
        tokenize=False, add_generation_prompt=False,
    )
    if not full.startswith(prompt):
        # Some templates rewrite earlier turns once an answer follows; fall back to answer + eos.
        return answer + (tokenizer.eos_token or "")
    return full[len(prompt):]
