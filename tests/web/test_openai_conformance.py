"""The OpenAI-compatible API as real clients use it: the official ``openai`` SDK and LangChain's ``ChatOpenAI``
against the running app, on the demo model (``local``) and through the vLLM stand-in (``remote``: a second
app whose RemoteBackend talks to the stand-in in front of the first).

Structured output is asserted to parse against its schema on every answer, at temperature 1, where the
tiny demo model left alone writes noise.
"""

from __future__ import annotations

import json
import threading
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from tests.serving.vllm_standin import StandinState, start_standin
from tests.web.conftest import free_port, seed_data_dir, start_app

pytestmark = pytest.mark.slow

ORIGIN = "https://app.example"
HELLO = [{"role": "user", "content": "Hello, how are you today?"}]


class Person(BaseModel):
    name: str
    age: int
    mood: Literal["happy", "sad"]
    tags: list[str] = Field(max_length=3)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                       "required": ["zone"]}}}


@pytest.fixture(scope="module")
def local_app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("conf-local") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir, temperature=0.0, max_new_tokens=96, cors_origins=[ORIGIN])
    yield app
    app.stop()


@pytest.fixture(scope="module")
def remote_app(local_app, tmp_path_factory):
    """An app with backend=remote, whose engine is the vLLM stand-in in front of ``local_app``."""
    standin = start_standin(StandinState(base_id="tiny-demo", upstream=local_app.url), free_port())
    data_dir = tmp_path_factory.mktemp("conf-remote") / "data"
    app = start_app(data_dir, backend="remote", remote_url=standin.url, model="tiny-demo", temperature=0.0,
                    max_new_tokens=96, cors_origins=[ORIGIN])
    app.standin = standin
    yield app
    app.stop()
    standin.stop()


@pytest.fixture(scope="module", params=["local", "remote"])
def app(request):
    return request.getfixturevalue(f"{request.param}_app")


@pytest.fixture(scope="module")
def client(app):
    with openai.OpenAI(base_url=f"{app.url}/v1", api_key="unused", timeout=300, max_retries=0) as c:
        yield c


def _stream_text(stream) -> tuple[dict[int, str], dict[int, str], list]:
    texts, reasons, chunks = {}, {}, []
    for chunk in stream:
        chunks.append(chunk)
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    return texts, reasons, chunks


# --- models --------------------------------------------------------------------------------------------
def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list()}
    assert {"base", "production"} <= ids
    assert client.models.retrieve("production").id == "production"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# --- stop, seed, n ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_stop_cuts_exactly_before_the_stop_string(client, stream):
    full = client.chat.completions.create(model="base", messages=HELLO, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert len(text) > 12
    stop = text[5:10]  # five characters: most likely spread over several tokens
    expected = text[: text.index(stop)]
    kwargs = dict(model="base", messages=HELLO, max_tokens=24, temperature=0, stop=[stop, "\u2603never"])  # NUL is refused (issue 12); a snowman never comes
    if stream:
        texts, reasons, _ = _stream_text(client.chat.completions.create(stream=True, **kwargs))
        assert (texts[0], reasons[0]) == (expected, "stop")
    else:
        r = client.chat.completions.create(**kwargs)
        assert (r.choices[0].message.content, r.choices[0].finish_reason) == (expected, "stop")


def test_seed_makes_sampling_reproducible_whatever_runs_beside_it(client):
    def ask(seed):
        r = client.chat.completions.create(model="base", messages=HELLO, max_tokens=12, temperature=1.0, seed=seed)
        return r.choices[0].message.content

    alone = ask(1234)
    noise = []  # unseeded batch-mates sampled in the same batches must not shift the seeded draws
    threads = [threading.Thread(target=lambda: noise.append(ask(None))) for _ in range(3)]
    for t in threads:
        t.start()
    beside = ask(1234)
    for t in threads:
        t.join()
    assert beside == alone
    assert {ask(s) for s in (1, 2, 3, 4)} != {alone}  # other seeds draw other answers


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices(client, stream):
    kwargs = dict(model="base", messages=HELLO, max_tokens=8, temperature=1.0, n=3, seed=5)
    if stream:
        texts, reasons, _ = _stream_text(client.chat.completions.create(stream=True, **kwargs))
        assert sorted(texts) == sorted(reasons) == [0, 1, 2]
    else:
        r = client.chat.completions.create(**kwargs)
        assert [c.index for c in r.choices] == [0, 1, 2]
        assert all(c.message.content for c in r.choices)
        assert r.usage.completion_tokens > 0 and len({c.message.content for c in r.choices}) > 1
    with pytest.raises(openai.BadRequestError, match="n must be at most 4"):
        client.chat.completions.create(model="base", messages=HELLO, n=5)


# --- refused fields ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("logprobs", True), ("top_logprobs", 2), ("logit_bias", {"5": 10}),
                                         ("frequency_penalty", 0.5), ("presence_penalty", -1.0),
                                         ("function_call", "auto"), ("made_up_field", 1)])
def test_unsupported_parameters_are_refused_by_name(client, field, value):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="base", messages=HELLO, max_tokens=4, extra_body={field: value})
    assert err.value.code == "unsupported_parameter" and field in err.value.message


def test_remote_engine_receives_stop_seed_and_structured_output_as_sent(remote_app):
    with openai.OpenAI(base_url=f"{remote_app.url}/v1", api_key="unused", timeout=300, max_retries=0) as client:
        client.chat.completions.create(model="base", messages=HELLO, max_tokens=20, stop=["zz"], seed=3,
                                       response_format={"type": "json_object"})
    sent = remote_app.standin.state.requests[-1][1]
    assert (sent["stop"], sent["seed"], sent["response_format"]) == (["zz"], 3, {"type": "json_object"})
    with openai.OpenAI(base_url=f"{remote_app.url}/v1", api_key="unused", timeout=300, max_retries=0) as client:
        client.chat.completions.create(model="base", messages=HELLO, max_tokens=80, tools=[WEATHER],
                                       tool_choice="required")
    sent = remote_app.standin.state.requests[-1][1]
    assert (sent["tools"], sent["tool_choice"]) == ([WEATHER], "required")


def test_neutral_values_of_unsupported_fields_are_accepted(client):
    r = client.chat.completions.create(model="base", messages=HELLO, max_tokens=4, logprobs=False,
                                       frequency_penalty=0, presence_penalty=0, user="u1")
    assert r.choices[0].message.content is not None


@pytest.mark.parametrize("body,what", [
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}}, "schema"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "rm_rf"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}, "max_tokens": 1}, "max_tokens"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": "get_weather"}}, "tool_choice"),  # was a 500
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}, "recursive"),
])
def test_hostile_structured_requests_get_a_clear_400(app, body, what):
    r = httpx.post(f"{app.url}/v1/chat/completions", timeout=120,
                   json={"model": "base", "messages": HELLO, **body})
    assert r.status_code == 400, r.text
    assert what in r.json()["error"]["message"]


# --- roles and tool histories ----------------------------------------------------------------------------
def test_developer_role_and_tool_history_are_rendered_and_stored(app, client):
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    r = client.chat.completions.create(model="base", messages=messages, tools=[WEATHER], tool_choice="none",
                                       max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None
    rated = httpx.post(f"{app.url}/v1/feedback", timeout=30,
                       json={"message_id": r.id, "rating": "down", "correction": "It is sunny in Paris."})
    assert rated.status_code == 200, rated.text


@pytest.mark.parametrize("history", [
    [{"role": "user", "content": "Weather?"}, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
    [{"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": None, "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
     {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}],
], ids=["no-call", "other-id"])
def test_a_tool_result_must_answer_an_earlier_call(client, history):
    with pytest.raises(openai.UnprocessableEntityError, match="must answer a tool call"):
        client.chat.completions.create(model="base", messages=history, max_tokens=4)


def test_content_null_is_refused_outside_an_assistant_tool_call(client):
    with pytest.raises(openai.UnprocessableEntityError, match="content may be null"):
        client.chat.completions.create(model="base", messages=[{"role": "user", "content": None}])


# --- usage and CORS --------------------------------------------------------------------------------------
def test_include_usage_sends_a_final_chunk_without_choices(client):
    _, reasons, chunks = _stream_text(client.chat.completions.create(
        model="base", messages=HELLO, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    assert reasons == {0: "length"}
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 6 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_cors_headers_on_real_responses_for_configured_origins_only(app):
    ok = httpx.get(f"{app.url}/v1/models", headers={"Origin": ORIGIN}, timeout=30)
    assert ok.headers.get("access-control-allow-origin") == ORIGIN
    other = httpx.get(f"{app.url}/v1/models", headers={"Origin": "https://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default():
    from settings import Settings

    assert Settings().cors_origins == []


# --- structured output ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_always_parse(client, stream):
    prompts = ["Describe a person.", "Hello, how are you today?", "Write a short poem about the sea."]
    for prompt in prompts:
        kwargs = dict(model="base", messages=[{"role": "user", "content": prompt}], temperature=1.0, max_tokens=96)
        if stream:
            with client.chat.completions.stream(response_format=Person, **kwargs) as s:
                final = s.get_final_completion()
        else:
            final = client.chat.completions.parse(response_format=Person, **kwargs)
        choice = final.choices[0]
        assert isinstance(choice.message.parsed, Person), choice.message.content
        assert choice.finish_reason == "stop"


def test_json_object_answers_always_parse(client):
    for max_tokens in (8, 40, 90):  # a tight budget is closed in time, not cut mid-value
        r = client.chat.completions.create(model="base", messages=HELLO, temperature=1.0, max_tokens=max_tokens,
                                           response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict)
        assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_calls_are_openai_shaped(client, choice, stream):
    kwargs = dict(model="base", messages=[{"role": "user", "content": "Weather in Paris?"}], temperature=1.0,
                  max_tokens=96, tools=[WEATHER, TIME], tool_choice=choice)
    if stream:
        calls, reason = {}, None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for ch in chunk.choices:
                reason = ch.finish_reason or reason
                for tc in ch.delta.tool_calls or ():
                    c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                    c["name"] += tc.function.name or ""
                    c["arguments"] += tc.function.arguments or ""
        names_args = [(c["name"], c["arguments"]) for c in calls.values()]
    else:
        r = client.chat.completions.create(**kwargs)
        reason = r.choices[0].finish_reason
        assert r.choices[0].message.content is None
        names_args = [(tc.function.name, tc.function.arguments) for tc in r.choices[0].message.tool_calls]
        assert all(tc.id.startswith("call_") and tc.type == "function" for tc in r.choices[0].message.tool_calls)
    assert reason == "tool_calls" and len(names_args) == 1
    name, arguments = names_args[0]
    args = json.loads(arguments)
    if isinstance(choice, dict) or name == "get_weather":
        assert name == "get_weather" and isinstance(args["city"], str) and isinstance(args["days"], int)
    else:
        assert name == "get_time" and isinstance(args["zone"], str)


class Parcel(BaseModel):
    """Nested models: pydantic writes the inner one under ``$defs`` and points at it with ``$ref``."""

    class Item(BaseModel):
        sku: str
        count: int

    items: list[Item] = Field(min_length=1, max_length=2)


def test_a_forced_call_whose_parameters_nest_pydantic_models_validates(client):
    ship = {"type": "function", "function": {"name": "ship", "parameters": Parcel.model_json_schema()}}
    assert "$defs" in ship["function"]["parameters"]
    r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Ship two lamps."}],
                                       temperature=1.0, max_tokens=96, tools=[TIME, ship],
                                       tool_choice={"type": "function", "function": {"name": "ship"}})
    call = r.choices[0].message.tool_calls[0].function
    assert call.name == "ship" and Parcel.model_validate_json(call.arguments).items


def test_tool_choice_auto_and_none_answer_in_text_or_a_valid_call(client):
    for choice in ("auto", "none"):
        r = client.chat.completions.create(model="base", messages=HELLO, max_tokens=12, tools=[WEATHER],
                                           tool_choice=choice)
        c = r.choices[0]
        if c.finish_reason == "tool_calls":
            assert choice == "auto" and json.loads(c.message.tool_calls[0].function.arguments) is not None
        else:
            assert isinstance(c.message.content, str)


# --- LangChain -----------------------------------------------------------------------------------------
def _langchain(app, **kw):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=f"{app.url}/v1", api_key="unused", model="base", temperature=1.0, max_tokens=96,
                      max_retries=0, timeout=300, **kw)


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(app, method):
    llm = _langchain(app).with_structured_output(Person if method != "json_mode" else Person.model_json_schema(),
                                                 method=method)
    for prompt in ("Describe a person.", "Hello, how are you today?"):
        result = llm.invoke(prompt)
        if method == "json_mode":
            assert isinstance(result, dict)
        else:
            assert isinstance(result, Person)


@pytest.mark.parametrize("stream", [False, True])
def test_langchain_bind_tools(app, stream):
    llm = _langchain(app).bind_tools([WEATHER, TIME], tool_choice="get_weather")
    if stream:
        message = None
        for part in llm.stream("What is the weather in Paris?"):
            message = part if message is None else message + part
    else:
        message = llm.invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"]["days"], int)


# --- Gradio's API ---------------------------------------------------------------------------------------
def test_gradio_client_can_chat_rate_and_correct(local_app):
    from gradio_client import Client

    client = Client(f"{local_app.url}/", verbose=False)
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert named == {"/chat", "/rate", "/correct"}  # the UI's own events are not an API
    out = client.predict("Hello, how are you today?", [], "base", None, api_name="/chat")
    assert out["answer"] and out["message_id"]
    assert client.predict(out["message_id"], "up", "nice", api_name="/rate")["rating"] == "up"
    fixed = client.predict(out["message_id"], "I am fine.", api_name="/correct")
    assert fixed["correction"] == "I am fine." and fixed["rating"] == "down"
