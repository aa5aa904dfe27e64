"""The load bench, shorter: 32 users with chat, feedback, arena, hot-swaps and a retrain; no 5xx, no lost write."""

from __future__ import annotations

import pytest

from bench.load import run_load, summary
from tests.web.conftest import seed_data_dir


@pytest.mark.slow
def test_32_users_lose_nothing(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    res = run_load(data_dir, users=32, seconds=20)
    print("\n".join(summary(res)))
    assert res["errors"] == []
    assert res["messages"] > 32 and res["ratings"] > 0 and res["votes"] > 0
    assert res["missing_messages"] == []
    assert res["missing_ratings"] == 0
    assert res["missing_votes"] == []
    assert res["swaps"] >= 3
    assert res["run_status"] in ("succeeded", "rejected"), res["run_error"]
