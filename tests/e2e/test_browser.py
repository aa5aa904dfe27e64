"""Browser end to end: Playwright drives Debian's Chromium against the app on loopback (demo model).

A user logs in, chats, rates, corrects an answer and votes in the arena; an admin retrains, sees the new
adapter in the Adapters tab and gets it answering in the chat. Screenshots of each step are saved under
test-artifacts/e2e/.
"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.e2e.chromium import ARTIFACTS, needs_chromium, shot, wait_text
from tests.retrain.test_closed_loop import TAUGHT, TRAIN_QUESTIONS, teach
from tests.web.conftest import add_users, seed_data_dir, start_app

FOLDER = "e2e"  # screenshots under test-artifacts/e2e/

pytestmark = [
    pytest.mark.browser,
    needs_chromium,
]


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
    if (ARTIFACTS / FOLDER).exists():
        shutil.rmtree(ARTIFACTS / FOLDER)
    store = running.ctx.store

    # --- a user: chat, thumbs, correction, hostile markup, arena -----------------------------------
    page = login(browser, running.url, "ursula", "ursula-password")
    wait_text(page, "#whoami", "ursula")
    assert not page.get_by_role("tab", name="Training").is_visible()  # admin tabs hidden for users
    send(page, store, "Hello there!")
    shot(page, FOLDER, "01-chat")
    page.locator("#chatbot button[aria-label='Like']").last.click()
    wait_text(page, "#feedback-status", "👍")
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    wait_text(page, "#feedback-status", "👎")
    shot(page, FOLDER, "02-rated")
    page.locator("#chatbot button[aria-label='Edit']").last.click()
    page.locator("#chatbot textarea").first.fill(TAUGHT)
    page.get_by_role("button", name="Submit").click()
    wait_text(page, "#feedback-status", "Correction saved")
    shot(page, FOLDER, "03-corrected")
    corrected = [e for e in store.rated_examples() if e.correction == TAUGHT]
    assert corrected and corrected[0].user == "ursula" and corrected[0].rating == "down"

    hostile = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> **bold**"
    send(page, store, hostile)
    assert page.evaluate("window.__pwned") is None
    assert "<script>" in page.inner_text("#chatbot")  # shown as text
    shot(page, FOLDER, "04-hostile-markup-as-text")

    page.get_by_role("tab", name="Arena").click()
    page.fill("#arena-prompt textarea", "Say something nice.")
    page.click("#arena-go")
    wait_text(page, "#arena-reveal", "Which answer is better?", timeout=60)
    assert "demo-" not in page.inner_text("#arena-a") + page.inner_text("#arena-b")
    shot(page, FOLDER, "05-arena-blind")
    page.click("#vote-a")
    wait_text(page, "#arena-reveal", "was")
    shot(page, FOLDER, "06-arena-revealed")
    assert store.arena_votes() and store.arena_votes()[-1].user == "ursula"
    page.close()

    # --- enough taught data for a real cycle, as other users would give it ----------------------------
    teach(running, tokens, TRAIN_QUESTIONS)

    # --- an admin: retrain now, watch it finish, see and use the new adapter ------------------------
    page = login(browser, running.url, "admin", "admin-password")
    page.get_by_role("tab", name="Training").click()
    page.click("#retrain-now")
    wait_text(page, "#retrain-status", "started")
    shot(page, FOLDER, "07-retrain-started")
    deadline = time.time() + 900
    while time.time() < deadline and running.ctx.retrain.current_run is not None:
        time.sleep(2)
    time.sleep(3)  # one more timer tick refreshes the table
    shot(page, FOLDER, "08-retrain-finished")
    run = store.list_runs()[0]
    assert run["status"] == "succeeded", (run["error"], run["gate"])
    assert "succeeded" in page.inner_text("#runs-table")

    page.get_by_role("tab", name="Adapters").click()
    wait_text(page, "#production-pointer", run["adapter"], timeout=30)
    assert run["adapter"] in page.inner_text("#leaderboard")
    shot(page, FOLDER, "09-adapters")

    page.get_by_role("tab", name="Chat").click()
    send(page, store, "Who are you, exactly?")
    shot(page, FOLDER, "10-chat-new-adapter")
    assert TAUGHT in page.inner_text("#chatbot")
    page.close()
