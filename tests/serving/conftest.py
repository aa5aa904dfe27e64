"""Serving fixtures: one LocalBackend over the demo model, with its own copy of the demo adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.demo_model import DEMO_ADAPTERS
from serving.local import LocalBackend
from serving.types import BASE, PRODUCTION, SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0)
PROMPT = [{"role": "user", "content": "Hello, how are you today?"}]


@pytest.fixture(scope="session")
def serving_adapters_dir(demo_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serving-adapters")
    for name in DEMO_ADAPTERS:
        shutil.copytree(demo_model_dir.adapters / name, root / name)
    return root


@pytest.fixture(scope="session")
def backend(demo_model_dir, serving_adapters_dir):
    b = LocalBackend(
        str(demo_model_dir.model), quantization="none", adapters_dir=serving_adapters_dir,
        max_prompt_tokens=256, max_new_tokens=64, max_batch_size=8, batch_wait_ms=20,
    )
    assert sorted(b.load_all_adapters()) == sorted(DEMO_ADAPTERS)
    yield b
    b.close()


@pytest.fixture(scope="session")
def solo_answers(backend) -> dict[str, tuple[str, int]]:
    """Each adapter's greedy answer to PROMPT generated alone: (text, completion tokens)."""
    answers = {}
    for name in (BASE, *DEMO_ADAPTERS):
        stream = backend.stream_chat(PROMPT, name, GREEDY)
        answers[name] = (stream.text(), stream.completion.completion_tokens)
    return answers


@pytest.fixture
def production_at_base(backend):
    yield
    backend.set_alias(PRODUCTION, BASE)
