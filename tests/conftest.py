"""Fixtures every package's tests share: the offline demo model, built once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class DemoModel:
    model: Path  # the tiny Llama base model directory
    adapters: Path  # holds the demo LoRA adapters demo-a and demo-b


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory) -> DemoModel:
    """The demo base model and its two demo adapters, built with the real builder (~10 s, once).

    Shared and read-only: tests that write adapters copy what they need into their own directory.
    """
    import os

    from serving.demo_model import ensure_demo_model

    # TUNELOOP_TEST_DEMO_DIR: a directory kept between sessions (ensure_demo_model rebuilds it only when
    # the builder changed), so repeated local runs skip the build. CI leaves it unset.
    cached = os.environ.get("TUNELOOP_TEST_DEMO_DIR")
    root = Path(cached) if cached else tmp_path_factory.mktemp("demo")
    model = ensure_demo_model(root / "model", root / "adapters")
    return DemoModel(model=model, adapters=root / "adapters")
