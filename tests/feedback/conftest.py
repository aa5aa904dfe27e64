"""Fixtures for the store tests: a real DuckDB file per test."""

from __future__ import annotations

import pytest

from feedback.store import FeedbackStore


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(tmp_path / "feedback.duckdb")
    yield s
    s.close()
