"""Structured output: OpenAI's ``response_format`` and ``tools`` as grammar-constrained decoding.

The library is llguidance (Microsoft's guidance engine, also behind vLLM's and llama.cpp's structured
output): a Rust wheel with no Python dependencies, so it installs beside our torch and transformers
without replacing either (xgrammar pulls in triton and a TVM runtime; outlines pins its own stack), it
compiles JSON Schema itself, reads a fast Hugging Face tokenizer directly and computes a token mask in
microseconds, which is all a ``TokenConstraint`` needs.

Termination is guaranteed, whatever the model would say: whitespace between JSON tokens is off (so it
cannot pad forever), and once the row's remaining budget reaches what the shortest way out needs, the
constraint stops offering choices and closes what is open (ends strings, then closes objects and arrays,
then ends the row). So an answer always parses against its schema and ends with finish_reason "stop" or
"tool_calls"; a ``max_tokens`` too small for even the shortest valid instance is refused up front (400),
not answered with broken JSON.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from serving.errors import BadRequest

JSON_OBJECT_SCHEMA: dict = {"type": "object"}
_MAX_REF_DEPTH = 8  # $ref chains deeper than this count as "one more object" when estimating lengths


@dataclass(frozen=True)
class StructuredOutput:
    """What the client asked the answer to be: a JSON value of ``schema``, or a call of one of ``tools``.

    Backend-neutral (plain data): the local backend compiles it into a grammar, the remote one passes the
    original OpenAI fields through to its engine.
    """

    kind: Literal["json_object", "json_schema", "tools"]
    schema: dict | None = None  # json_schema: the schema; json_object: None
    schema_name: str = "response"
    strict: bool = False
    tools: tuple[dict, ...] = ()  # OpenAI tool objects: {"type": "function", "function": {...}}
    tool_choice: Any = "auto"  # "auto" | "none" | "required" | {"type": "function", "function": {"name"}}
    raw: dict = field(default_factory=dict, compare=False)  # the request's own fields, for pass-through

    def __post_init__(self):
        # A grammar is built from these (see grammar_schema): refuse what it cannot bound before any backend.
        if self.kind == "json_schema":
            refuse_recursion(self.schema or {}, "response_format schema")
        elif self.forced_tool_call:
            for i, tool in enumerate(self.tools):
                refuse_recursion(tool["function"].get("parameters") or {}, f"tools[{i}].function.parameters")

    @property
    def forced_tool_call(self) -> bool:
        """The answer must be a tool call (a grammar applies); under "auto" the model chooses freely."""
        return self.kind == "tools" and (self.tool_choice == "required" or isinstance(self.tool_choice, dict))

    @property
    def constrained(self) -> bool:
        return self.kind in ("json_object", "json_schema") or self.forced_tool_call

    def function_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def grammar_schema(self) -> dict:
        """The JSON schema the answer is decoded against (for a tool call: {"name", "arguments"})."""
        if self.kind == "json_object":
            return JSON_OBJECT_SCHEMA
        if self.kind == "json_schema":
            return self.schema or {}
        names = self.function_names()
        if isinstance(self.tool_choice, dict):
            names = [self.tool_choice["function"]["name"]]
        variants = []
        for tool in self.tools:
            fn = tool["function"]
            if fn["name"] not in names:
                continue
            params = fn.get("parameters") or {"type": "object", "properties": {}}
            variants.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                             "properties": {"name": {"const": fn["name"]}, "arguments": params}})
        if len(variants) == 1:
            return _rebase_refs(variants[0], "#/properties/arguments")
        return {"anyOf": [_rebase_refs(v, f"#/anyOf/{k}/properties/arguments") for k, v in enumerate(variants)]}


def _rebase_refs(schema: dict, at: str) -> dict:
    """``schema`` with each local ``$ref`` of the parameters under it ("#/$defs/C", as pydantic, the OpenAI SDK and
    LangChain write nested models) re-pointed at ``at``, where the parameters now sit in the grammar's schema.
    A copy, built iteratively: the client picks the depth."""
    out: dict = {}
    stack = [(schema, out)]
    while stack:
        src, dst = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if k == "$ref" and isinstance(v, str) and v.startswith("#/") and isinstance(src, dict):
                v = at + v[1:]
            if isinstance(v, (dict, list)):
                child = {} if isinstance(v, dict) else [None] * len(v)
                stack.append((v, child))
                v = child
            dst[k] = v
    return out


# --- recursion ----------------------------------------------------------------------------------------
def _resolve(root: dict, ref: str):
    """The subschema a local JSON pointer ("#", "#/$defs/a") names, or None (external, anchor, missing)."""
    if ref != "#" and not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/") if ref.startswith("#/") else ():
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _refs(node) -> Iterator[str]:
    """The ``$ref`` strings anywhere under ``node`` (iteratively: the client picks the depth); one inside a
    ``const`` or ``default`` counts too, which errs on the side of refusing."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            for key in ("$recursiveRef", "$dynamicRef"):  # these exist only for recursion
                if key in n:
                    yield "#"
            if isinstance(n.get("$ref"), str):
                yield n["$ref"]
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


def refuse_recursion(schema: dict, where: str) -> None:
    """``BadRequest`` when ``schema`` refers to itself: "#" from anywhere, a ``$ref`` to its own ancestor, or
    $defs that refer to each other in a cycle. A recursive schema may have no finite instance at all, and the
    closing strategy's shortest-instance bound (``min_json_chars``) assumes one; so refused, not approximated.
    (Unresolvable refs are left to the grammar compiler, which refuses them.)"""
    edges: dict[str, list[str]] = {}  # ref target -> the targets of the refs inside it
    todo = ["#"]
    while todo:
        ref = todo.pop()
        if ref not in edges:
            node = _resolve(schema, ref)
            edges[ref] = [r for r in _refs(node) if _resolve(schema, r) is not None] if node is not None else []
            todo.extend(edges[ref])
    # A cycle among the targets, found by depth-first search with an explicit stack (grey = on the path).
    state: dict[str, str] = {}
    for start in edges:
        if start in state:
            continue
        stack = [(start, iter(edges[start]))]
        state[start] = "grey"
        while stack:
            ref, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[ref] = "black"
                stack.pop()
            elif state.get(child) == "grey":
                raise BadRequest(f"the JSON schema is not supported: {where} is recursive "
                                 f"(through $ref {child!r})")
            elif child not in state:
                state[child] = "grey"
                stack.append((child, iter(edges[child])))


# --- tool calls in text ----------------------------------------------------------------------------
_HERMES = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)  # Qwen/Hermes chat templates


def parse_tool_calls(text: str, spec: StructuredOutput | None) -> list[dict] | None:
    """OpenAI ``tool_calls`` from an answer: a constrained {"name", "arguments"} object, or Hermes-style
    ``<tool_call>`` blocks the model wrote on its own under "auto". None when the answer is plain text."""
    if spec is None or spec.kind != "tools" or spec.tool_choice == "none":
        return None
    names = set(spec.function_names())
    found = [m.group(1) for m in _HERMES.finditer(text)]
    if not found and text.strip().startswith("{"):
        found = [text.strip()]
    calls = []
    for raw in found:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("name") not in names:
            continue
        args = obj.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return calls or None


# --- shortest instance, for the closing budget ------------------------------------------------------
def min_json_chars(schema: Any, root: dict | None = None, depth: int = 0) -> int:
    """An upper bound on the characters of the shortest compact JSON instance of ``schema``."""
    root = root if root is not None else schema
    if not isinstance(schema, dict) or depth > _MAX_REF_DEPTH:
        return 2
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return min_json_chars(target, root, depth + 1)
    if "const" in schema:
        return len(json.dumps(schema["const"], separators=(",", ":")))
    if "enum" in schema and schema["enum"]:
        return min(len(json.dumps(v, separators=(",", ":"))) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return min(min_json_chars(s, root, depth + 1) for s in schema[key])
    if schema.get("allOf"):
        return max(min_json_chars(s, root, depth + 1) for s in schema["allOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        parts = [len(json.dumps(k)) + 1 + min_json_chars(props.get(k, {}), root, depth + 1)
                 for k in schema.get("required", [])]
        return 2 + sum(parts) + max(0, len(parts) - 1)
    if kind == "array":
        n = int(schema.get("minItems", 0))
        return 2 + n * (min_json_chars(schema.get("items", {}), root, depth + 1) + 1)
    if kind == "string":
        return 2 + int(schema.get("minLength", 0)) * 6  # a character may need a \\uXXXX escape
    if kind in ("number", "integer"):
        return max(1, len(str(schema.get("minimum", 0))))
    if kind == "boolean":
        return 5
    return 4  # null, or no type: "null" is the shortest


# --- the constraint ----------------------------------------------------------------------------------
class _Vocab:
    """llguidance's view of one tokenizer plus the ids the closing strategy needs (built once, ~1 s)."""

    def __init__(self, tokenizer, eos_ids: set[int]):
        import llguidance.hf

        self.ll = llguidance.hf.from_tokenizer(tokenizer, eos_token=sorted(eos_ids)[0] if eos_ids else None)
        self.size = len(tokenizer)
        self.eos = sorted(eos_ids)
        vocab = tokenizer.get_vocab()
        self.text = {i: tokenizer.decode([i]) for i in vocab.values()}
        single = {}
        for i, t in sorted(self.text.items()):
            if len(t) == 1 and t not in single:
                single[t] = i
        self.single = single


_vocab_cache: dict[int, _Vocab] = {}
_vocab_lock = threading.Lock()


def vocab_for(tokenizer, eos_ids: set[int]) -> _Vocab:
    with _vocab_lock:
        v = _vocab_cache.get(id(tokenizer))
        if v is None:
            v = _vocab_cache[id(tokenizer)] = _Vocab(tokenizer, eos_ids)
        return v


def compile_grammar(spec: StructuredOutput) -> str:
    """The llguidance grammar of ``spec``; raises ``BadRequest`` for a schema it cannot compile."""
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(
            spec.grammar_schema(), overrides={"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"})
    except ValueError as exc:
        raise BadRequest(f"response_format schema: {exc}") from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise BadRequest(f"the JSON schema is not supported for constrained decoding: {messages[0]}")
    return grammar


class GrammarConstraint:
    """A ``TokenConstraint`` (serving.types) backed by an llguidance matcher; one per request."""

    def __init__(self, spec: StructuredOutput, tokenizer, eos_ids: set[int], max_tokens: int):
        from llguidance import LLMatcher

        self.vocab = vocab_for(tokenizer, eos_ids)
        self.matcher = LLMatcher(self.vocab.ll, compile_grammar(spec))
        if self.matcher.is_error():
            raise BadRequest(f"the JSON schema is not supported for constrained decoding: {self.matcher.get_error()}")
        self.min_chars = min_json_chars(spec.grammar_schema())
        if max_tokens < self.min_chars + 1:
            raise BadRequest(f"max_tokens {max_tokens} is too small for the requested structured output: its "
                             f"shortest valid answer needs about {self.min_chars + 1} tokens")
        self.budget = max_tokens
        self.used = 0
        self.text = ""
        self._in_string = self._escaped = False
        self._depth = 0

    # The shortest way out needs at most: the schema's shortest instance (required keys not yet written),
    # per open object or array its closing bracket plus a pending key's ':' and value, and a few to end
    # a string and the row.
    def _closing(self) -> bool:
        return self.budget - self.used <= self.min_chars + 2 * self._depth + 4

    def _allowed(self):
        import torch

        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
        return bits.reshape(-1).bool()

    def mask(self, scores):
        import torch

        allowed = self._allowed()[: scores.shape[-1]]
        if allowed.shape[0] < scores.shape[-1]:  # model vocab padded past the tokenizer's
            allowed = torch.cat([allowed, torch.zeros(scores.shape[-1] - allowed.shape[0], dtype=torch.bool)])
        if not bool(allowed.any()):  # a matcher in error allows nothing: end the row rather than sample NaN
            allowed[[e for e in self.vocab.eos if e < allowed.shape[0]]] = True
        if self._closing():
            forced = self._closing_token(allowed)
            if forced is not None:
                allowed = torch.zeros_like(allowed)
                allowed[forced] = True
        allowed = allowed.to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))

    def _closing_token(self, allowed) -> int | None:
        """The token that brings the answer nearest its end: close a string, an object or array, then
        the shortest value (a digit, an empty string); None leaves the grammar's own choice (a forced key
        character, ':', true/false/null)."""
        order = ['"'] if self._in_string else ["}", "]", ",", "0", '"']
        if not self._in_string and self.matcher.is_accepting():
            order = ["EOS"]
        for ch in order:
            ids = self.vocab.eos if ch == "EOS" else [self.vocab.single.get(ch)]
            for i in ids:
                if i is not None and i < allowed.shape[0] and bool(allowed[i]):
                    return i
        return None

    def accept(self, token_id: int) -> None:
        self.used += 1
        self.matcher.consume_token(token_id)
        if token_id in self.vocab.eos:
            return
        piece = self.vocab.text.get(token_id, "")
        self.text += piece
        for ch in piece:  # a tiny JSON lexer: enough to know if we are inside a string, and how deep
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1

    def is_terminated(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()


def build_constraint(spec: StructuredOutput | None, tokenizer, eos_ids: set[int], max_tokens: int):
    """The ``TokenConstraint`` for ``spec``, or None when the answer is free text."""
    if spec is None or not spec.constrained:
        return None
    return GrammarConstraint(spec, tokenizer, eos_ids, max_tokens)
