"""Browser end to end: Playwright drives Debian's Chromium against the app on loopback (demo model).

A user logs in, chats, rates, corrects an answer and votes in the arena; an admin retrains, sees the new
adapter in the Adapters tab and gets it answering in the chat. Screenshots of each step are saved under
test-artifacts/e2e/.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.retrain.test_closed_loop import TAUGHT, TRAIN_QUESTIONS, teach
from tests.web.conftest import add_users, seed_data_dir, start_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (make browser)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def login(browser, url: str, user: str, password: str):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url)
    page.fill("input[type=text]", user)
    page.fill("input[type=password]", password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    return page


def send(page, store, text: str) -> None:
    """Send a message and wait until its answer is stored (the turn is stored when the stream ends)."""
    before = store.stats()["totals"]["assistant_messages"]
    page.fill("#chat-input textarea", text)
    page.click("#send")
    deadline = time.time() + 60
    while store.stats()["totals"]["assistant_messages"] == before:
        assert time.time() < deadline, "no answer stored"
        time.sleep(0.2)
    time.sleep(1.0)  # the last UI update lands


def wait_text(page, selector: str, text: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in page.inner_text(selector):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {selector}: {page.inner_text(selector)!r}")


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "ursula", "ann", "ben", "cat"))
    running = start_app(data_dir, temperature=0.0, promotion="auto", retrain_min_examples=1, heldout_fraction=0.2)
    yield running, tokens
    running.stop()


@pytest.mark.slow
def test_user_and_admin_journey(browser, app):
    running, tokens = app
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    store = running.ctx.store

    # --- a user: chat, thumbs, correction, hostile markup, arena -----------------------------------
    page = login(browser, running.url, "ursula", "ursula-password")
    wait_text(page, "#whoami", "ursula")
    assert not page.get_by_role("tab", name="Training").is_visible()  # admin tabs hidden for users
    send(page, store, "Hello there!")
    shot(page, "01-chat")
    page.locator("#chatbot button[aria-label='Like']").last.click()
    wait_text(page, "#feedback-status", "👍")
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    wait_text(page, "#feedback-status", "👎")
    shot(page, "02-rated")
    page.locator("#chatbot button[aria-label='Edit']").last.click()
    page.locator("#chatbot textarea").first.fill(TAUGHT)
    page.get_by_role("button", name="Submit").click()
    wait_text(page, "#feedback-status", "Correction saved")
    shot(page, "03-corrected")
    corrected = [e for e in store.rated_examples() if e.correction == TAUGHT]
    assert corrected and corrected[0].user == "ursula" and corrected[0].rating == "down"

    hostile = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> **bold**"
    send(page, store, hostile)
    assert page.evaluate("window.__pwned") is None
    assert "<script>" in page.inner_text("#chatbot")  # shown as text
    shot(page, "04-hostile-markup-as-text")

    page.get_by_role("tab", name="Arena").click()
    page.fill("#arena-prompt textarea", "Say something nice.")
    page.click("#arena-go")
    wait_text(page, "#arena-reveal", "Which answer is better?", timeout=60)
    assert "demo-" not in page.inner_text("#arena-a") + page.inner_text("#arena-b")
    shot(page, "05-arena-blind")
    page.click("#vote-a")
    wait_text(page, "#arena-reveal", "was")
    shot(page, "06-arena-revealed")
    assert store.arena_votes() and store.arena_votes()[-1].user == "ursula"
    page.close()

    # --- enough taught data for a real cycle, as other users would give it ----------------------------
    teach(running, tokens, TRAIN_QUESTIONS)

    # --- an admin: retrain now, watch it finish, see and use the new adapter ------------------------
    page = login(browser, running.url, "admin", "admin-password")
    page.get_by_role("tab", name="Training").click()
    page.click("#retrain-now")
    wait_text(page, "#retrain-status", "started")
    shot(page, "07-retrain-started")
    deadline = time.time() + 900
    while time.time() < deadline and running.ctx.retrain.current_run is not None:
        time.sleep(2)
    time.sleep(3)  # one more timer tick refreshes the table
    shot(page, "08-retrain-finished")
    run = store.list_runs()[0]
    assert run["status"] == "succeeded", (run["error"], run["gate"])
    assert "succeeded" in page.inner_text("#runs-table")

    page.get_by_role("tab", name="Adapters").click()
    wait_text(page, "#production-pointer", run["adapter"], timeout=30)
    assert run["adapter"] in page.inner_text("#leaderboard")
    shot(page, "09-adapters")

    page.get_by_role("tab", name="Chat").click()
    send(page, store, "Who are you, exactly?")
    shot(page, "10-chat-new-adapter")
    assert TAUGHT in page.inner_text("#chatbot")
    page.close()
