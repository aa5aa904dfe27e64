"""OpenAI's chat-completion fields beyond the basics: checks, structured output, and response shapes.

Kept apart from ``web.api`` so the route stays a few lines: ``request_options`` turns a request into
``SamplingParams`` (refusing what Tuneloop does not implement), ``completion_body`` and ``stream_events``
shape the answer of ``n`` turns as OpenAI does (``choices``, ``tool_calls``, usage in its own last chunk).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

from serving.errors import BadRequest
from serving.structured import StructuredOutput
from serving.types import SamplingParams
from web.errors import ApiError, classify, error_body

MAX_STOPS = 4


def _unsupported(field: str, why: str = "is not supported by this server") -> ApiError:
    return ApiError(400, f"{field} {why}", code="unsupported_parameter")


def refuse_unsupported(extra: dict, unsupported: tuple[str, ...], ignored: tuple[str, ...]) -> None:
    """400 ``unsupported_parameter`` naming the first field that would change the answer if honoured."""
    for name, value in extra.items():
        if name in ignored:
            continue
        if name in unsupported and value in (None, False, 0, {}, [], ""):
            continue  # the neutral value: what Tuneloop does anyway
        raise _unsupported(name)


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOPS:
        raise BadRequest(f"stop: at most {MAX_STOPS} strings")
    if any(not s for s in stops):
        raise BadRequest("stop: strings must not be empty")
    return tuple(stops)


def structured_output(response_format: dict | None, tools: list[dict] | None, tool_choice) -> StructuredOutput | None:
    """The ``StructuredOutput`` a request asks for, or None for free text; malformed fields are 400."""
    if tools is not None and response_format is not None and response_format.get("type") != "text":
        raise BadRequest("give response_format or tools, not both")
    if tools:
        names = []
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
            if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                raise BadRequest(f"tools[{i}].function.parameters must be a JSON schema object")
            names.append(fn["name"])
        choice = "auto" if tool_choice is None else tool_choice
        if isinstance(choice, dict):
            fn = choice.get("function")
            if choice.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequest("tool_choice must be 'auto', 'none', 'required' or "
                                 "{'type': 'function', 'function': {'name': ...}}")
            name = fn["name"]
            if name not in names:
                raise BadRequest(f"tool_choice names a function that is not in tools: {name!r}")
            choice = {"type": "function", "function": {"name": name}}
        return StructuredOutput("tools", tools=tuple(tools), tool_choice=choice,
                                raw={"tools": tools, **({"tool_choice": tool_choice} if tool_choice is not None else {})})
    if tool_choice is not None and tool_choice != "none":
        raise BadRequest("tool_choice needs tools")
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind in ("json_object", "json") and isinstance(response_format.get("value"), dict):
        # TGI's form, which huggingface_hub's InferenceClient sends for an OpenAI json_schema: so another
        # Tuneloop's RemoteBackend gets its schema honoured here.
        return StructuredOutput("json_schema", schema=response_format["value"], strict=True,
                                raw={"response_format": response_format})
    if kind == "json_object":
        return StructuredOutput("json_object", raw={"response_format": response_format})
    if kind == "json_schema":
        js = response_format.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict) or not isinstance(js.get("name", ""), str):
            raise BadRequest("response_format.json_schema must be {'name': ..., 'schema': {...}, 'strict': ...}")
        return StructuredOutput("json_schema", schema=js.get("schema") or {}, schema_name=js.get("name", "response"),
                                strict=bool(js.get("strict")), raw={"response_format": response_format})
    raise BadRequest(f"response_format.type must be text, json_object or json_schema, not {kind!r}")


def with_options(params: SamplingParams, stop, seed, structured: StructuredOutput | None) -> SamplingParams:
    return replace(params, stop=stop_strings(stop), seed=seed, structured=structured)


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice ``index`` of ``n`` draws with its own seed, so choices differ yet each is reproducible."""
    return None if seed is None else (seed + index) % 2**63


def _message(turn, text: str) -> tuple[dict, str]:
    c = turn.completion
    if c.tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": c.tool_calls}, "tool_calls"
    return {"role": "assistant", "content": text}, c.finish_reason or "stop"


def usage(turns) -> dict:
    prompt = turns[0].completion.prompt_tokens
    completion = sum(t.completion.completion_tokens for t in turns)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(base: dict, turns) -> dict:
    choices = []
    for i, turn in enumerate(turns):
        text = "".join(turn.deltas())
        message, reason = _message(turn, text)
        choices.append({"index": i, "message": message, "finish_reason": reason, "message_id": turn.message_id})
    return {**base, "object": "chat.completion", "adapter": turns[0].completion.adapter, "choices": choices,
            "usage": usage(turns)}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def stream_events(base: dict, turns, structured: StructuredOutput | None, include_usage: bool) -> Iterator[str]:
    """SSE chunks for ``turns`` (choices one after the other; they were generated together).

    Under ``tools`` an answer is held until it ends: only then is it known to be a call or text. However it
    ends (all sent, an error, or closed at a ``yield`` because the client went away) every turn is stopped
    and stored once, with what its client was shown (``ChatTurn.close``).
    """
    chunk = {**base, "object": "chat.completion.chunk", **({"usage": None} if include_usage else {})}
    hold = structured is not None and structured.kind == "tools" and structured.tool_choice != "none"

    def choice(i: int, delta: dict) -> str:
        return _sse({**chunk, "choices": [{"index": i, "delta": delta, "finish_reason": None}]})

    try:
        for i, turn in enumerate(turns):
            turn.begin()  # the next chunk hands the client this turn's message id
            yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None, "message_id": turn.message_id}]})
            held = []
            try:
                for delta in turn.deltas():
                    if hold:
                        held.append(delta)
                    else:
                        yield choice(i, {"content": delta})
            except Exception as exc:  # headers are sent: report the error in-band, OpenAI style
                status, code, message = classify(exc)
                yield _sse(error_body(status, code, message))
                return  # the other turns are stopped in ``finally``
            c = turn.completion
            if c.tool_calls:
                yield choice(i, {"tool_calls": [{"index": k, **call} for k, call in enumerate(c.tool_calls)]})
            elif held:
                yield choice(i, {"content": "".join(held)})
            reason = "tool_calls" if c.tool_calls else (c.finish_reason or "stop")
            yield _sse({**chunk, "adapter": c.adapter, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]})
        if include_usage:
            yield _sse({**chunk, "choices": [], "usage": usage(turns)})
        yield "data: [DONE]\n\n"
    finally:
        for turn in turns:
            turn.close()
