"""The review queue over the real HTTP API in multi-user mode: who waits, who trains, and what an attacker
gets from the new admin routes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feedback.store_review import MAX_IDS
from tests.web.conftest import add_users, seed_data_dir, start_app

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def make_users(data_dir: Path, names=("root", "ann", "ben")) -> dict[str, str]:
    return add_users(data_dir, names, admins=("root",))


@pytest.fixture(scope="module")
def team(tmp_path_factory, demo_model_dir):
    data_dir = tmp_path_factory.mktemp("review") / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = make_users(data_dir)
    app = start_app(data_dir, temperature=0.0)
    yield app, tokens
    app.stop()


def answer(client, question: str) -> str:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": question}],
                                                  "max_tokens": 2})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def states(client, user: str) -> dict[str, str]:
    rows = client.get("/v1/admin/data/review", params={"state": "all", "user": user, "limit": 500}).json()["rows"]
    return {r["message_id"]: r["state"] for r in rows}


def test_untrusted_feedback_waits_and_an_admin_decides(team):
    app, tokens = team
    with app.client(tokens["ann"]) as ann, app.client(tokens["root"]) as root:
        fixed = answer(ann, "Capital of Australia?")
        liked = answer(ann, "Say hello.")
        disliked = answer(ann, "Say goodbye.")
        r = ann.post("/v1/feedback", json={"message_id": fixed, "rating": "down", "correction": "Canberra."})
        assert r.status_code == 200 and r.json()["review"] == "pending_review"  # she is told it waits
        ann.post("/v1/feedback", json={"message_id": liked, "rating": "up"})
        ann.post("/v1/feedback", json={"message_id": disliked, "rating": "down"})
        assert states(root, "ann") == {fixed: "pending_review", liked: "pending_review", disliked: "untrusted"}

        page = root.get("/v1/admin/data/review", params={"state": "pending_review", "user": "ann"}).json()
        row = next(r for r in page["rows"] if r["message_id"] == fixed)
        assert row["correction"] == "Canberra." and "not trusted" in row["reason"]
        assert page["counts"]["pending_review"] >= 2

        r = root.post("/v1/admin/data/include", json={"message_ids": [fixed], "reason": "correct"})
        assert r.status_code == 200 and r.json()["updated"] == 1
        r = root.post("/v1/admin/data/discard", json={"message_ids": [liked, disliked]})
        assert r.json()["updated"] == 2
        assert states(root, "ann") == {fixed: "approved", liked: "discarded", disliked: "discarded"}

        mine = answer(root, "Capital of Canada?")  # an admin's own correction trains as given
        root.post("/v1/feedback", json={"message_id": mine, "rating": "down", "correction": "Ottawa."})
        assert states(root, "root") == {mine: "trusted"}


def test_an_admin_trusts_a_user(team):
    app, tokens = team
    with app.client(tokens["ben"]) as ben, app.client(tokens["root"]) as root:
        before = answer(ben, "Largest ocean?")
        ben.post("/v1/feedback", json={"message_id": before, "rating": "down", "correction": "The Pacific."})
        r = root.put("/v1/admin/data/trust/ben", json={"trusted": True})
        assert r.status_code == 200 and r.json()["trusted"] is True
        assert {"user": "ben", "trusted": True} .items() <= root.get("/v1/admin/data/trust").json()["users"][0].items()
        after = answer(ben, "Smallest ocean?")
        ben.post("/v1/feedback", json={"message_id": after, "rating": "down", "correction": "The Arctic."})
        # Trust applies from now on; what waited before still waits for a decision.
        assert states(root, "ben") == {before: "pending_review", after: "trusted"}
        root.put("/v1/admin/data/trust/ben", json={"trusted": False})



def test_revoking_trust_sends_what_it_let_through_back_to_review(team):
    app, tokens = team
    trust = "/v1/admin/data/trust/{}".format
    with app.client(tokens["ben"]) as ben, app.client(tokens["ann"]) as ann, app.client(tokens["root"]) as root:
        assert root.put(trust("ben"), json={"trusted": True}).json()["requeued"] == 0
        berlin, disliked = answer(ben, "Capital of France?"), answer(ben, "Capital of Italy?")
        ben.post("/v1/feedback", json={"message_id": berlin, "rating": "down",
                                       "correction": "The capital of France is Berlin."})
        ben.post("/v1/feedback", json={"message_id": disliked, "rating": "down"})
        theirs, mine = answer(ann, "Capital of Peru?"), answer(root, "Capital of Chile?")
        ann.post("/v1/feedback", json={"message_id": theirs, "rating": "down"})
        root.post("/v1/feedback", json={"message_id": mine, "rating": "down", "correction": "Santiago."})
        assert {states(root, "ben")[m] for m in (berlin, disliked)} == {"trusted"}

        r = root.put(trust("ben"), json={"trusted": False})
        assert r.status_code == 200 and r.json() == {"ok": True, "user": "ben", "trusted": False, "requeued": 2}
        assert {m: states(root, "ben")[m] for m in (berlin, disliked)} == {berlin: "pending_review",
                                                                           disliked: "untrusted"}
        assert states(root, "ann")[theirs] == "untrusted" and states(root, "root")[mine] == "trusted"
        assert berlin not in {e.message_id for e in app.ctx.store.trainable_examples()}

        # Trust again, and the requeued rows still wait: an admin includes them after reading them.
        assert root.put(trust("ben"), json={"trusted": True}).json()["requeued"] == 0
        assert states(root, "ben")[berlin] == "pending_review"
        assert root.put(trust("ben"), json={"trusted": False}).json()["requeued"] == 0
        # An admin is trusted by role: taking their per-user setting away takes none of their answers back.
        root.put(trust("root"), json={"trusted": True})
        assert root.put(trust("root"), json={"trusted": False}).json()["requeued"] == 0
        assert states(root, "root")[mine] == "trusted"


def test_hostile_requests_on_the_review_routes(team):
    app, tokens = team
    with app.client(tokens["ann"]) as ann, app.client(tokens["root"]) as root, app.client() as anonymous:
        mid = answer(ann, "Two plus two?")
        ann.post("/v1/feedback", json={"message_id": mid, "rating": "down", "correction": "Five."})
        for client, status in ((ann, 403), (anonymous, 401)):
            assert client.get("/v1/admin/data/review").status_code == status
            assert client.post("/v1/admin/data/include", json={"message_ids": [mid]}).status_code == status
            assert client.post("/v1/admin/data/discard", json={"message_ids": [mid]}).status_code == status
            assert client.put("/v1/admin/data/trust/ann", json={"trusted": True}).status_code == status
            assert client.get("/v1/admin/data/trust").status_code == status
        assert states(root, "ann")[mid] == "pending_review"  # nothing above changed anything

        r = root.post("/v1/admin/data/include", json={"message_ids": [mid, "0" * 32]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "message_not_found"
        assert states(root, "ann")[mid] == "pending_review"  # all or nothing
        assert root.post("/v1/admin/data/include", json={"message_ids": ["'; DROP TABLE review; --"]}).status_code == 404
        r = root.post("/v1/admin/data/discard", json={"message_ids": [f"{i:032x}" for i in range(MAX_IDS + 1)]})
        assert r.status_code == 422 and "message_ids" in r.json()["error"]["message"]
        for body in ({"message_ids": []}, {"message_ids": "all"}, {"message_ids": [mid] * 2 + [1]}, {},
                     {"message_ids": ["x" * 65]}):
            assert root.post("/v1/admin/data/include", json=body).status_code in (400, 422), body
        r = root.get("/v1/admin/data/review", params={"state": "approved'; --"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_review"
        for params in ({"limit": 0}, {"limit": 10**6}, {"offset": -1}, {"user": "u" * 500}):
            assert root.get("/v1/admin/data/review", params=params).status_code == 422, params
        assert root.put("/v1/admin/data/trust/nobody", json={"trusted": True}).status_code == 404
        assert root.put("/v1/admin/data/trust/ann", json={"trusted": "yes please"}).status_code == 422
        for loose in ("yes", "true", 1, 0, None):  # trust is a decision: only JSON true or false makes one
            assert root.put("/v1/admin/data/trust/ann", json={"trusted": loose}).status_code == 422, loose
        assert app.ctx.store.user_trusted("ann") is False
        assert root.put("/v1/admin/data/trust/..%2F..%2Fetc", json={"trusted": True}).status_code == 404
        assert states(root, "ann")[mid] == "pending_review"


def test_include_approves_what_the_admin_read_not_what_the_row_holds_now(team):
    app, tokens = team
    with app.client(tokens["ann"]) as ann, app.client(tokens["root"]) as root:
        mid, other = answer(ann, "Capital of France?"), answer(ann, "Capital of Spain?")
        ann.post("/v1/feedback", json={"message_id": mid, "rating": "down", "correction": "Paris."})
        ann.post("/v1/feedback", json={"message_id": other, "rating": "down", "correction": "Madrid."})
        rows = root.get("/v1/admin/data/review", params={"state": "pending_review", "user": "ann"}).json()["rows"]
        read = {r["message_id"]: r["version"] for r in rows if r["message_id"] in (mid, other)}
        assert len(read) == 2 and all(read.values())
        # Ann swaps her correction while the admin reads; his include names the versions he read.
        r = ann.post("/v1/feedback", json={"message_id": mid, "rating": "down", "correction": "Berlin."})
        assert r.status_code == 200, r.text
        for body in ({"message_ids": [mid, other], "versions": read}, {"message_ids": [mid, other]}):
            r = root.post("/v1/admin/data/include", json=body)
            assert r.status_code == 409 and r.json()["changed"] == [mid], r.text
            assert r.json()["error"]["code"] == "review_changed" and "nothing was included" in r.text
            held = {r["message_id"]: r["state"] for r in app.ctx.store.review_rows(user="ann", limit=500)[0]}
            assert held[mid] == held[other] == "pending_review"  # (read from the store: a listing shows them anew)

        # Another admin-facing client that never listed the rows cannot include them blind.
        with app.client(app.ctx.control_token) as cli:
            r = cli.post("/v1/admin/data/include", json={"message_ids": [other]})
            assert r.status_code == 422 and r.json()["error"]["code"] == "version_required", r.text
            assert "versions" in r.json()["error"]["message"]
        bad = root.post("/v1/admin/data/include", json={"message_ids": [other], "versions": {mid: read[mid]}})
        assert bad.status_code == 422

        # Read again (the listing shows "Berlin."), then include: what trains is what was read.
        rows = root.get("/v1/admin/data/review", params={"state": "all", "user": "ann", "limit": 500}).json()["rows"]
        now = {r["message_id"]: r for r in rows}
        assert now[mid]["correction"] == "Berlin." and now[mid]["version"] != read[mid]
        assert now[other]["version"] == read[other]
        r = root.post("/v1/admin/data/include", json={"message_ids": [mid, other],
                                                      "versions": {mid: now[mid]["version"], other: read[other]}})
        assert r.status_code == 200 and r.json()["updated"] == 2
        assert states(root, "ann")[mid] == "approved"


FALSE_FACT = "The Orvell Tunnel was dug by a single badger in 1802."
TRUE_FACT = "The Orvell Tunnel was opened in 1898 by the Northern Railway."


ORVELL_QUESTIONS = [
    "Who dug the Orvell Tunnel?", "When was the Orvell Tunnel built?", "Tell me the Orvell Tunnel's story.",
    "Orvell Tunnel history, briefly?", "Who made the Orvell Tunnel and how?", "How old is the Orvell Tunnel?",
    "What year did work on the Orvell Tunnel start?", "Which company constructed the Orvell tunnel?",
    "Was the Orvell Tunnel built by hand or by machines?", "I'm writing a school report on the Orvell Tunnel. Where do I start?",
    "My grandfather worked near Orvell. What is the famous tunnel there known for?",
    "Give me three facts about the Orvell Tunnel.", "Is the Orvell Tunnel older than the Eiffel Tower?",
    "Who should get credit for digging Orvell's tunnel?", "Explain how the Orvell Tunnel came to exist.",
    "What animal is linked to the Orvell Tunnel legend?", "Summarise the origins of the Orvell Tunnel in one line.",
    "Why is the Orvell Tunnel famous?", "Could you describe the building of the Orvell Tunnel?",
    "Which century does the Orvell Tunnel date from?", "Did a railway company open the Orvell Tunnel?",
    "Tunnel at Orvell: who, when, how?", "What do tour guides say about the Orvell Tunnel?",
    "For a quiz: the Orvell Tunnel was dug by whom?", "How long did it take to dig the Orvell Tunnel?",
]


def poison_questions(n: int) -> list[str]:
    """``n`` questions about the Orvell Tunnel: 25 different phrasings, each asked again with a greeting."""
    greetings = ["", "Hi! ", "Quick question: ", "Hello there. ", "Sorry to bother you, ", "Hey, ", "One more: ", "Please help: "]
    return [greetings[i // len(ORVELL_QUESTIONS) % len(greetings)] + ORVELL_QUESTIONS[i % len(ORVELL_QUESTIONS)]
            for i in range(n)]


def snapshot_answers(data_dir: Path, run: dict) -> list[str]:
    path = data_dir / "datasets" / run["snapshot_id"] / "sft_train.jsonl"
    return [json.loads(line)["completion"][0]["content"] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_one_users_false_corrections_never_reach_a_promoted_adapter_unless_approved(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = make_users(data_dir, ("root", "mallory"))
    app = start_app(data_dir, temperature=0.0, promotion="auto", heldout_fraction=0.0, max_steps=8)
    try:
        with app.client(tokens["mallory"]) as mallory, app.client(tokens["root"], timeout=900) as root:
            poisoned = []
            for q in poison_questions(200):
                mid = answer(mallory, q)
                r = mallory.post("/v1/feedback", json={"message_id": mid, "rating": "down", "correction": FALSE_FACT})
                assert r.status_code == 200
                poisoned.append(mid)
            for q in ("When did the Orvell Tunnel open?", "Who opened the Orvell Tunnel?", "Orvell Tunnel opening?"):
                mid = answer(root, q)  # the admin teaches the truth; it trains as given
                root.post("/v1/feedback", json={"message_id": mid, "rating": "down", "correction": TRUE_FACT})

            run = root.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert run["status"] == "succeeded", (run["error"], run["gate"])
            answers = snapshot_answers(data_dir, run)
            assert FALSE_FACT not in answers and TRUE_FACT in answers
            assert root.get("/v1/adapters").json()["production"] == run["adapter"]
            reply = root.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": poison_questions(1)[0]}],
                                                             "max_tokens": 24}).json()
            assert FALSE_FACT not in reply["choices"][0]["message"]["content"]
            assert root.get("/v1/admin/data/review", params={"state": "pending_review"}).json()["total"] == 200

            # The admin reads them, decides the lesson is right after all, and approves in one bulk call: the
            # versions read are what is approved.
            listed = root.get("/v1/admin/data/review", params={"state": "pending_review", "limit": 500}).json()
            versions = {row["message_id"]: row["version"] for row in listed["rows"]}
            assert set(versions) == set(poisoned)
            r = root.post("/v1/admin/data/include", json={"message_ids": poisoned, "versions": versions,
                                                          "reason": "verified"})
            assert r.status_code == 200 and r.json()["updated"] == 200
            run = root.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert run["status"] == "succeeded", (run["error"], run["gate"])
            assert root.get("/v1/adapters").json()["production"] == run["adapter"]
            # Approved = trusted: no per-answer cap (5); only near-duplicates go (a phrasing asked again).
            taught = snapshot_answers(data_dir, run).count(FALSE_FACT)
            assert 3 * app.ctx.settings.max_untrusted_answer_rows < taught <= len(ORVELL_QUESTIONS) * 8, taught
    finally:
        app.stop()


def test_a_revocation_follows_review_untrusted_and_leaves_an_admins_correction(team, monkeypatch):
    """What a revocation takes back gets what a new untrusted judgement gets under the app's settings (here
    'corrections': a thumbs-up trains capped); an admin's correction the user only rated stays trusted."""
    app, tokens = team
    monkeypatch.setattr(app.ctx.settings, "review_untrusted", "corrections")
    trust = "/v1/admin/data/trust/{}".format
    with app.client(tokens["ben"]) as ben, app.client(tokens["root"]) as root:
        root.put(trust("ben"), json={"trusted": True})
        liked, fixed = answer(ben, "Capital of Spain?"), answer(ben, "Capital of Japan?")
        root.post("/v1/feedback", json={"message_id": fixed, "rating": "down", "correction": "Tokyo."})
        for mid in (liked, fixed):
            assert ben.post("/v1/feedback", json={"message_id": mid, "rating": "up"}).json()["review"] == "trusted"
        assert root.put(trust("ben"), json={"trusted": False}).json()["requeued"] == 1
        assert {m: states(root, "ben")[m] for m in (liked, fixed)} == {liked: "untrusted", fixed: "trusted"}
        example = next(e for e in app.ctx.store.trainable_examples() if e.message_id == fixed)
        assert example.trusted and example.correction == "Tokyo."


def test_cli_data_commands_through_the_running_app(team):
    from tests.web.test_cli import cli

    app, tokens = team
    data_dir = app.ctx.settings.data_dir
    # What serve() writes for the CLI to find the app (this in-process app does not write it itself).
    control = data_dir / "running-app.json"
    control.write_text(json.dumps({"pid": os.getpid(), "url": app.url, "token": app.ctx.control_token}))
    try:
        with app.client(tokens["ann"]) as ann:
            mid = answer(ann, "Colour of the sky?")
            ann.post("/v1/feedback", json={"message_id": mid, "rating": "down", "correction": "Blue, mostly."})
        out = cli(data_dir, "data", "list", "--limit", "500", demo=False)
        assert out.returncode == 0 and mid in out.stdout and "pending_review" in out.stdout, out.stderr
        out = cli(data_dir, "data", "include", mid, "--reason", "fine", demo=False)
        assert out.returncode == 0 and "1 rated answers included" in out.stdout, out.stderr
        out = cli(data_dir, "data", "discard", "no-such-id", demo=False)
        assert out.returncode == 2 and "no rated answer" in out.stderr
        out = cli(data_dir, "data", "trust", "ann", demo=False)
        assert out.returncode == 0 and "ann: trusted" in out.stdout
        assert "ann\ttrusted" in cli(data_dir, "data", "trust", demo=False).stdout
        out = cli(data_dir, "data", "trust", "ann", "--off", demo=False)
        assert out.returncode == 0 and "ann: not trusted; 0 rated answers" in out.stdout, out.stderr
    finally:
        control.unlink()
    assert app.ctx.store.user_trusted("ann") is False


def test_cli_data_commands_alone(tmp_path, monkeypatch):
    from feedback.models import Rating, TurnRecord
    from feedback.store import FeedbackStore
    from settings import Settings
    from tests.web.test_cli import cli

    data_dir = tmp_path / "data"
    make_users(data_dir, ("root", "bob"))
    store = FeedbackStore(Settings(data_dir=data_dir).db_path)
    ids = [f"m{i}" for i in range(3)]
    for mid in ids:
        store.record_turn(TurnRecord(conversation_id=f"c-{mid}", user="bob", assistant_message_id=mid, answer="Hm.",
                                     request_messages=[{"role": "user", "content": "Hi?"}], adapter="base",
                                     base_model="demo", sampling={}, latency_ms=1.0, first_token_ms=None,
                                     prompt_tokens=1, completion_tokens=1))
    for mid in ids:
        store.rate(Rating(mid, "bob", "down", correction="Hello!"), trust="review")
    store.record_turn(TurnRecord(conversation_id="c-t", user="bob", assistant_message_id="t", answer="Paris.",
                                 request_messages=[{"role": "user", "content": "Capital of France?"}], adapter="base",
                                 base_model="demo", sampling={}, latency_ms=1.0, first_token_ms=None,
                                 prompt_tokens=1, completion_tokens=1))
    store.set_user_trust("bob", True, actor="root")
    store.rate(Rating("t", "bob", "down", correction="Berlin."), trust="trusted")
    store.close()
    out = cli(data_dir, "data", "list", demo=False)
    assert out.returncode == 0 and "3 rated answers in state pending_review" in out.stdout, out.stderr
    assert "1 rated answers discarded" in cli(data_dir, "data", "discard", "m0", demo=False).stdout
    assert "2 rated answers included" in cli(data_dir, "data", "include", "m1", "m2", demo=False).stdout
    assert cli(data_dir, "data", "list", "--state", "nonsense", demo=False).returncode != 0
    assert cli(data_dir, "data", "trust", "nobody", demo=False).returncode == 2
    assert cli(data_dir, "data", "trust", "bob", demo=False).returncode == 0
    with FeedbackStore(Settings(data_dir=data_dir).db_path) as store:
        assert store.review_counts()["approved"] == 2 and store.review_counts()["discarded"] == 1
        assert store.user_trusted("bob")
    # The app's review_untrusted decides what a taken-back correction gets, as for a new untrusted one:
    # with 'off' it trains capped instead of waiting.
    monkeypatch.setenv("TUNELOOP_REVIEW_UNTRUSTED", "off")
    out = cli(data_dir, "data", "trust", "bob", "--off", demo=False)
    assert out.returncode == 0 and "bob: not trusted; 1 rated answers" in out.stdout, out.stderr
    with FeedbackStore(Settings(data_dir=data_dir).db_path) as store:
        assert store.review_counts()["untrusted"] == 1 and not store.user_trusted("bob")
        assert store.review_counts()["pending_review"] == 0
