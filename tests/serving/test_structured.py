"""Stop strings (the worker's StopStrings), the shortest-instance budget, tool-call parsing and the template's tool check, without a model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from serving.chat_format import render_prompt
from serving.errors import BadRequest
from serving.stop_strings import StopStrings as StopText
from serving.structured import StructuredOutput, compile_grammar, min_json_chars, parse_tool_calls

TOOLS = ({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},)


def _feed(stops, deltas):
    s = StopText(stops)
    out = "".join(s.feed(d) for d in deltas)
    return out + s.flush(), s.hit


@pytest.mark.parametrize("deltas", [["Hello wor", "ld!"], ["Hel", "lo w", "o", "rld"], ["Hello world"]])
def test_stop_is_cut_exactly_even_across_deltas(deltas):
    assert _feed(["wor"], deltas) == ("Hello ", True)


def test_held_back_prefix_is_released_when_no_stop_follows():
    assert _feed(["world"], ["Hello wo", "nderful"]) == ("Hello wonderful", False)
    assert _feed(["END"], ["abc E"]) == ("abc E", False)  # the answer really ended in a stop's prefix


def test_earliest_of_several_stops_wins():
    assert _feed(["c", "ab"], ["xabc"]) == ("x", True)


def test_min_json_chars_bounds_the_shortest_instance():
    schema = {"type": "object", "required": ["a", "b"],
              "properties": {"a": {"type": "string"}, "b": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}}
    shortest = json.dumps({"a": "", "b": [0]}, separators=(",", ":"))
    assert min_json_chars(schema) >= len(shortest)
    assert min_json_chars({"$defs": {"x": {"const": "abc"}}, "$ref": "#/$defs/x"}) == 5
    assert min_json_chars({"$ref": "#"}) > 0  # a self-reference ends


# A recursive schema was accepted and answered "" (or "{") as a success: it may have no finite instance.
@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"properties": {"a": {"properties": {"b": {"$ref": "#/properties/a"}}}}},  # an ancestor
    {"$defs": {"a": {"items": {"$ref": "#/$defs/b"}}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
    {"type": "object", "properties": {"x/y": {"items": {"$ref": "#/properties/x~1y"}}}},  # an escaped pointer
    {"$dynamicRef": "#meta"},
])
def test_recursive_schemas_are_refused(schema):
    with pytest.raises(BadRequest, match="recursive"):
        StructuredOutput("json_schema", schema=schema)
    tools = ({"type": "function", "function": {"name": "f", "parameters": schema}},)
    with pytest.raises(BadRequest, match=r"tools\[0\].function.parameters is recursive"):
        StructuredOutput("tools", tools=tools, tool_choice="required")
    StructuredOutput("tools", tools=tools, tool_choice="auto")  # no grammar: the model writes freely


def test_shared_and_deep_schemas_are_not_recursion():
    shared = {"$defs": {"s": {"type": "string"}, "pair": {"properties": {"a": {"$ref": "#/$defs/s"},
                                                                         "b": {"$ref": "#/$defs/s"}}}},
              "properties": {"p": {"$ref": "#/$defs/pair"}, "q": {"$ref": "#/$defs/pair"}}}
    deep: dict = {"type": "string"}
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = {"type": "array", "items": deep}
    for schema in (shared, deep, {"$ref": "#/$defs/missing"}):  # a missing target is the compiler's to refuse
        StructuredOutput("json_schema", schema=schema)


def test_forced_tool_parameters_keep_their_own_defs():
    """Parameters with ``$defs`` (how pydantic and the OpenAI SDK write nested models) still compile once wrapped
    in the grammar's {"name", "arguments"} object, one tool or several."""
    parcel = {"type": "object", "required": ["items"], "$defs": {"Item": {
        "type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}}},
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}}}
    ship = {"type": "function", "function": {"name": "ship", "parameters": parcel}}
    for tools, choice in (((ship,), "required"), ((TOOLS[0], ship), {"type": "function", "function": {"name": "ship"}}),
                          ((TOOLS[0], ship), "required")):
        spec = StructuredOutput("tools", tools=tools, tool_choice=choice)
        compile_grammar(spec)  # raised "Pointer '/$defs/Item' does not exist" before
    assert parcel["properties"]["items"]["items"] == {"$ref": "#/$defs/Item"}  # the client's schema is not changed


def test_tool_calls_are_parsed_from_constrained_and_hermes_text():
    forced = StructuredOutput("tools", tools=TOOLS, tool_choice="required")
    calls = parse_tool_calls('{"name":"f","arguments":{"x":1}}', forced)
    assert calls[0]["function"] == {"name": "f", "arguments": '{"x": 1}'} and calls[0]["type"] == "function"
    auto = StructuredOutput("tools", tools=TOOLS, tool_choice="auto")
    hermes = 'ok <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    assert parse_tool_calls(hermes, auto)[0]["function"]["name"] == "f"
    assert parse_tool_calls('{"name": "other", "arguments": {}}', auto) is None  # not a declared tool
    assert parse_tool_calls("plain text", auto) is None
    assert parse_tool_calls(hermes, StructuredOutput("tools", tools=TOOLS, tool_choice="none")) is None


def test_template_without_tool_support_is_a_clear_400(demo_model_dir):
    tok = AutoTokenizer.from_pretrained(demo_model_dir.model)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(BadRequest, match="does not support tools"):
        render_prompt(tok, [{"role": "user", "content": "hi"}], tools=list(TOOLS))
    with pytest.raises(BadRequest, match="tool messages"):
        render_prompt(tok, [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}])
    assert render_prompt(tok, [{"role": "user", "content": "hi"}]) == "user: hi\n"


def test_demo_template_renders_plain_chats_as_before_and_tools_like_qwen(demo_model_dir):
    tok = AutoTokenizer.from_pretrained(demo_model_dir.model)
    plain = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(plain, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n")
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    text = render_prompt(tok, [*plain[:2], {"role": "assistant", "content": None, "tool_calls": calls},
                               {"role": "tool", "tool_call_id": "c", "content": "42"}], tools=list(TOOLS))
    assert '<tools>\n{"type": "function"' in text and '<tool_call>\n{"name": "f", "arguments": {"x": 1}}' in text
    assert "<tool_response>\n42\n</tool_response>" in text and text.endswith("<|im_start|>assistant\n")
