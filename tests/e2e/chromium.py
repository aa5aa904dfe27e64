"""What the browser tests share: Debian's Chromium (never a downloaded browser), its flags, and page helpers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="Debian's chromium is not installed (make browser)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def shot(page, folder: str, name: str) -> None:
    """A full-page screenshot at test-artifacts/<folder>/<name>.png."""
    out = ARTIFACTS / folder
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def wait_text(page, selector: str, text: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in page.inner_text(selector):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {selector}: {page.inner_text(selector)!r}")
