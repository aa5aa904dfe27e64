"""Every bad request is refused with the right error before any token is generated."""

import pytest

from serving.errors import BadRequest, MaxTokensTooLarge, PromptTooLong
from serving.types import BASE, SamplingParams
from tests.serving.conftest import PROMPT

OK = SamplingParams(max_tokens=4, temperature=0)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        None,
        "hello",
        [{"role": "robot", "content": "hi"}],
        [{"content": "hi"}],
        [{"role": "user", "content": 3}],
        [{"role": "user", "content": None}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        ["hi"],
    ],
)
def test_bad_messages(backend, messages):
    with pytest.raises(BadRequest):
        backend.stream_chat(messages, BASE, OK)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=-0.1),
        SamplingParams(temperature=2.5),
        SamplingParams(temperature=float("nan")),
        SamplingParams(top_p=0),
        SamplingParams(top_p=1.5),
        SamplingParams(max_tokens=0),
        # Hostile stop strings and seeds: too many, wrong types, empty, huge (searched every token).
        SamplingParams(stop=("a", "b", "c", "d", "e")),
        SamplingParams(stop="abc"),
        SamplingParams(stop=("",)),
        SamplingParams(stop=(3,)),
        SamplingParams(stop=(None,)),
        SamplingParams(stop=("x" * 10_000,)),
        SamplingParams(stop={"a": 1}),
        SamplingParams(seed=True),
        SamplingParams(seed=1.5),
        SamplingParams(seed="7"),
        SamplingParams(seed=2**64),
        SamplingParams(seed=-(2**63) - 1),
    ],
)
def test_bad_sampling(backend, params):
    with pytest.raises(BadRequest):
        backend.stream_chat(PROMPT, BASE, params)


def test_max_tokens_too_large(backend):
    with pytest.raises(MaxTokensTooLarge):
        backend.stream_chat(PROMPT, BASE, SamplingParams(max_tokens=backend.max_new_tokens + 1))


def test_prompt_too_long(backend):
    long = [{"role": "user", "content": "word " * (backend.max_prompt_tokens + 10)}]
    with pytest.raises(PromptTooLong):
        backend.stream_chat(long, BASE, OK)


def test_refusals_hold_no_lease(backend):
    for _ in range(3):
        with pytest.raises(BadRequest):
            backend.stream_chat([], "demo-a", OK)
    assert all(a.in_flight == 0 for a in backend.adapters.list())
