"""Browser end to end for the UI people use every day (Playwright + Debian's Chromium, one app per module).

In file order: the first user is added while the app runs and the login appears without a restart;
a user's conversations survive a reload and can be listed, switched, renamed, searched and deleted;
a thumbs-down with a reason lands in the store; an admin reads a rejected run in words, sees what
changed, rolls back from the lineage, and no table shows placeholder headers. Screenshots of every tab
at 1280 and 390 px go to test-artifacts/ui/.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from feedback.models import AdapterRecord
from retrain.gate import gate
from tests.e2e.chromium import needs_chromium, shot, wait_text
from tests.web.conftest import seed_data_dir, start_app
from web.auth import UserDirectory

FOLDER = "ui"  # screenshots under test-artifacts/ui/
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # one app and a browser: about a minute on an idle machine
    needs_chromium,
]


@pytest.fixture(scope="module")
def app(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("ui") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    running = start_app(data_dir, temperature=0.0, max_new_tokens=12)
    yield running
    running.stop()


def login(browser, url: str, user: str, viewport=DESKTOP, path: str = "/"):
    page = browser.new_page(viewport=viewport)
    page.goto(url + path)
    page.fill("input[type=text]", user)
    page.fill("input[type=password]", f"{user}-password")
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    return page


def until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.2)


def send(page, store, text: str) -> None:
    """Type and press Enter; wait until the answer is stored and the list shows the conversation."""
    before = store.stats()["totals"]["assistant_messages"]
    page.fill("#chat-input textarea", text)
    page.press("#chat-input textarea", "Enter")
    until(lambda: store.stats()["totals"]["assistant_messages"] > before, "no answer stored")
    time.sleep(1.0)  # the last UI updates (chat, list, URL) land


def href(page) -> str:
    return page.evaluate("() => location.href")  # page.url misses history.replaceState


def conv_titles(page) -> list[str]:
    return [t.strip() for t in page.locator("#conv-list label").all_inner_texts()]


def open_tab(page, name: str) -> None:
    """Click a tab; at 390 px Gradio moves the later tabs into an overflow menu (the ⋯ button)."""
    tab = page.get_by_role("tab", name=name)
    if not tab.first.is_visible():
        page.click(".overflow-menu button")
        tab = page.locator(".overflow-dropdown button", has_text=name)
    tab.first.click()


def assert_no_placeholder_headers(page) -> None:
    headers = [h.strip() for h in page.locator("th").all_inner_texts()]
    assert not {"1", "2", "3"} & set(headers), headers


def test_login_appears_with_the_first_user_without_a_restart(browser, app):
    page = browser.new_page(viewport=DESKTOP)
    page.goto(app.url)
    page.wait_for_selector("#chat-input textarea", timeout=60_000)  # single-user mode: no login
    users = UserDirectory(app.ctx.settings.data_dir / "users.toml")
    for name in ("admin", "ursula"):
        users.add_user(name, f"{name}-password", "admin" if name == "admin" else "user")
    page.goto(app.url)
    page.wait_for_selector("input[type=password]", timeout=30_000)
    page.fill("input[type=text]", "ursula")
    page.fill("input[type=password]", "not her password")
    page.get_by_role("button", name="Login").click()
    wait_text(page, "body", "Incorrect")
    shot(page, FOLDER, "00-login-wrong-password")
    page.close()


def test_conversations_survive_reload_switch_rename_search_delete(browser, app):
    store = app.ctx.store
    page = login(browser, app.url, "ursula")
    send(page, store, "Tell me about sourdough bread")
    until(lambda: "c=" in href(page), "the conversation id is not in the URL")
    [first] = store.list_conversations("ursula")
    page.reload()
    page.wait_for_selector("#chat-input textarea")
    wait_text(page, "#chatbot", "sourdough")  # the open conversation survived the reload
    wait_text(page, "#conv-list", "Tell me about sourdough")

    page.click("#new-chat")
    until(lambda: "sourdough" not in page.inner_text("#chatbot"), "New chat did not clear the chat")
    send(page, store, "What is the weather on Mars?")
    until(lambda: len(conv_titles(page)) == 2, "the second chat is not listed")
    assert conv_titles(page)[0].startswith("What is the weather")  # newest first
    shot(page, FOLDER, "01-chat-1280")

    page.locator("#conv-list label", has_text="sourdough").click()  # switch back
    wait_text(page, "#chatbot", "sourdough")
    until(lambda: first.id in href(page), "the URL does not name the conversation switched to")

    # Thumbs-down, then a reason and a comment right under the answer.
    page.locator("#chatbot button[aria-label='Dislike']").last.click()
    wait_text(page, "#feedback-status", "👎")
    page.locator("#feedback-reason label", has_text="Too long").click()
    wait_text(page, "#feedback-status", "Too long")
    page.fill("#comment textarea", "Shorter, please.")
    page.press("#comment textarea", "Enter")
    wait_text(page, "#feedback-status", "saved")
    [row] = store.rated_conversations(user="ursula")
    assert (row["rating"], row["reason"], row["comment"]) == ("down", "too_long", "Shorter, please.")
    shot(page, FOLDER, "02-thumbs-down-reason")

    page.click("#conv-manage")
    page.fill("#conv-title textarea, #conv-title input", "Baking")
    page.click("#conv-rename")
    until(lambda: "Baking" in conv_titles(page), "rename not listed")
    page.fill("#conv-search textarea, #conv-search input", "mars")
    until(lambda: conv_titles(page) == ["What is the weather on Mars?"], "search did not filter")
    page.fill("#conv-search textarea, #conv-search input", "")
    until(lambda: len(conv_titles(page)) == 2, "clearing the search did not list all")

    page.locator("#conv-list label", has_text="Baking").click()
    wait_text(page, "#chatbot", "sourdough")
    page.click("#conv-delete")
    until(lambda: conv_titles(page) == ["What is the weather on Mars?"], "deleted chat still listed")
    assert "sourdough" not in page.inner_text("#chatbot")
    assert any(e.message_id == row["message_id"] for e in store.rated_examples())  # soft: kept for training

    # Someone else's (or a deleted) conversation id in the URL opens a fresh chat, not that conversation.
    page.goto(f"{app.url}/?c={first.id}")
    page.wait_for_selector("#chat-input textarea")
    wait_text(page, "#conv-note", "could not be opened")
    assert "sourdough" not in page.inner_text("#chatbot")
    page.close()

    phone = login(browser, app.url, "ursula", viewport=PHONE)
    send(phone, store, "Hi from a phone")
    shot(phone, FOLDER, "03-chat-390")
    phone.close()


def _seed_runs_and_lineage(app) -> str:
    store, settings = app.ctx.store, app.ctx.settings
    adapters = settings.adapters_dir
    store.register_adapter(AdapterRecord(name="demo-a", path=str(adapters / "demo-a"), status="candidate"))
    store.register_adapter(AdapterRecord(name="demo-b", path=str(adapters / "demo-b"), parent="demo-a",
                                         status="candidate"))
    app.ctx.promoter.promote("demo-a", actor="admin", reason="first")
    app.ctx.promoter.promote("demo-b", actor="admin", reason="second")
    result = gate({"heldout_loss": 3.1, "pref_accuracy": None, "reference_ppl": 40.0, "pref_pairs": 0},
                  {"heldout_loss": 2.0, "pref_accuracy": None, "reference_ppl": 39.0}, settings)
    assert not result.passed
    samples = [{"prompt": [{"role": "user", "content": "What is the capital of France?"}], "wanted": "Paris.",
                "candidate": "CANDIDATE-ANSWER Paris", "production": "PRODUCTION-ANSWER Lyon"}]
    run_id = store.create_run("manual", "admin", {})
    now = datetime.now(UTC)
    store.update_run(run_id, status="rejected", stage="done", started_at=now, finished_at=now,
                     parent_adapter="demo-b", gate={**result.__dict__, "samples": samples},
                     error="; ".join(r for r in result.reasons if not r.endswith("ok")))
    return run_id


def test_admin_pages_tell_the_story_and_roll_back_from_the_lineage(browser, app):
    _seed_runs_and_lineage(app)
    page = login(browser, app.url, "admin")
    shot(page, FOLDER, "10-chat-admin-1280")
    page.get_by_role("tab", name="Training").click()
    wait_text(page, "#runs-table", "rejected")
    wait_text(page, "#runs-table", "does worse than production")  # the gate's verdict in words
    wait_text(page, "#what-changed", "CANDIDATE-ANSWER")
    assert "PRODUCTION-ANSWER" in page.inner_text("#what-changed")
    assert_no_placeholder_headers(page)
    shot(page, FOLDER, "11-training-1280")

    page.get_by_role("tab", name="Data").click()
    wait_text(page, "#rated-table", "Too long")  # the reason ursula gave, in words
    assert "message_id" not in page.inner_text("#rated-table").lower()
    assert_no_placeholder_headers(page)
    shot(page, FOLDER, "12-data-1280")

    page.get_by_role("tab", name="Adapters").click()
    wait_text(page, "#lineage-tree", "demo-b")
    assert "production" in page.inner_text("#lineage-tree")
    assert "[1e+03" not in page.inner_text("#leaderboard")
    assert_no_placeholder_headers(page)
    shot(page, FOLDER, "13-adapters-1280")
    page.click("#lineage-pick input")
    page.locator("li[data-testid=dropdown-option]", has_text="demo-a").first.click()
    page.click("#lineage-rollback")
    wait_text(page, "#lineage-result", "demo-a")
    assert app.ctx.store.production() == "demo-a"
    page.get_by_role("tab", name="Arena").click()
    shot(page, FOLDER, "14-arena-1280")
    page.close()

    phone = login(browser, app.url, "admin", viewport=PHONE)
    for i, tab in enumerate(("Arena", "Data", "Training", "Adapters")):
        open_tab(phone, tab)
        time.sleep(2.0)
        assert_no_placeholder_headers(phone)
        shot(phone, FOLDER, f"2{i}-{tab.lower()}-390")
    phone.close()
