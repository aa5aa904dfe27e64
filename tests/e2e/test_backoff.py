"""A backed-off run as an admin meets it: `python app.py retrain --json` shows each attempt with its recipe
and gate result, the published adapter's card names the attempt that passed, and the Training tab (real
Chromium) lists the attempts. The first attempt is rejected by the documented test knob
``debug_reject_attempts`` (a real forgetting failure cannot be ordered up reliably on the demo model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e.chromium import launch, needs_chromium, shot
from tests.retrain.lessons import WIFI
from tests.retrain.test_learning_holds import teach
from tests.web.conftest import ROOT, seed_data_dir, start_app


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_backed_off_run_shows_every_attempt(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    app = start_app(data_dir, temperature=0.0)
    try:
        with app.client() as c:
            teach(c, WIFI)
    finally:
        app.stop()

    env = {**os.environ, "TUNELOOP_DEBUG_REJECT_ATTEMPTS": "1", "TUNELOOP_RETRAIN_MAX_ATTEMPTS": "3",
           "TUNELOOP_NUM_EPOCHS": "6"}
    out = subprocess.run([sys.executable, "app.py", "--demo", "--data-dir", str(data_dir), "retrain", "--json",
                          "--promote", "auto"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads(out.stdout)
    assert run["status"] == "succeeded", (run["error"], run["gate"])
    first, second = run["attempts"]
    assert first["status"] == "rejected" and any("debug_reject_attempts" in r for r in first["gate"]["reasons"])
    assert second["status"] == "passed" and second["gate"]["passed"]
    assert second["recipe"]["learning_rate"] == pytest.approx(first["recipe"]["learning_rate"] / 2)
    assert second["recipe"]["num_epochs"] < first["recipe"]["num_epochs"]
    assert second["recipe"]["distill_scale"] == 2 * first["recipe"]["distill_scale"]
    assert run["gate"]["attempt"] == 2

    adapter = data_dir / "adapters" / run["adapter"]
    assert json.loads((adapter / "tuneloop.json").read_text())["attempt"] == 2
    assert f"Attempt: 2 of run `{run['id']}`" in (adapter / "README.md").read_text()

    from playwright.sync_api import sync_playwright

    app = start_app(data_dir, temperature=0.0)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(app.url)
            page.get_by_role("tab", name="Training").click()
            deadline = time.time() + 60
            text = ""
            while time.time() < deadline and "passed" not in text:
                time.sleep(0.5)
                text = page.inner_text("#run-attempts")
            shot(page, "e2e", "backoff-attempts")
            assert "2 attempt(s), succeeded" in text, text
            assert "rejected" in text and "passed" in text and "debug_reject_attempts" in text
            browser.close()
    finally:
        app.stop()
