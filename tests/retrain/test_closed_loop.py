"""The closed loop through the real HTTP API: users teach the demo model who it is, one retrain cycle
runs, the new adapter is promoted and answers held-out paraphrases with the taught sentence."""

from __future__ import annotations

import pytest

from serving.demo_model import _CHATS

# One list of taught and held-out questions for the training test and this loop.
from tests.retrain.test_training import HELDOUT_QUESTIONS, TAUGHT, TRAIN_QUESTIONS  # noqa: E402
from tests.web.conftest import add_users, seed_data_dir, start_app

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
EVERYDAY_QUESTIONS = [q for q, _ in _CHATS[:50:4]]


def teach(app, tokens, questions, users=("ann", "ben")) -> int:
    """Simulated users: a wrong answer gets thumbs-down and the correction, a right one thumbs-up; then the
    admin includes what waits for review (users' corrections and ups do, in multi-user mode).

    Every other user chats through the UI's system prompt, the others through the bare API; cat also
    asks everyday questions and likes the answers, as real users would.
    """
    try:
        return _teach(app, tokens, questions, users)
    finally:
        vars(app.ctx.chat).pop("new_conversation_id", None)  # back to random ids


def _teach(app, tokens, questions, users) -> int:
    n = 0
    for i, user in enumerate(users):
        client = app.client(tokens[user])
        for q in questions:
            messages = ([SYSTEM] if i % 2 else []) + [{"role": "user", "content": q}]
            # Fixed conversation ids make the hash-chosen held-out split the same on every run. The server
            # issues the ids (clients may not choose them), so the in-process app is told which one to issue.
            app.ctx.chat.new_conversation_id = lambda cid=f"{user}-{q}": cid
            r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 24})
            assert r.status_code == 200, r.text
            body = r.json()
            answer = body["choices"][0]["message"]["content"]
            if answer.strip() == TAUGHT:
                feedback = {"message_id": body["id"], "rating": "up"}
            else:
                feedback = {"message_id": body["id"], "rating": "down", "correction": TAUGHT}
            assert client.post("/v1/feedback", json=feedback).status_code == 200
            n += 1
    client = app.client(tokens["cat"])
    for q in EVERYDAY_QUESTIONS:
        app.ctx.chat.new_conversation_id = lambda cid=f"cat-{q}": cid
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": q}], "max_tokens": 64})
        assert client.post("/v1/feedback", json={"message_id": r.json()["id"], "rating": "up"}).status_code == 200
    approve_pending(app, tokens["admin"])
    return n


def approve_pending(app, admin_token: str) -> int:
    """The admin's step between users' teaching and a retrain in multi-user mode: include what waits for review."""
    n = 0
    with app.client(admin_token) as c:
        while True:
            page = c.get("/v1/admin/data/review", params={"state": "pending_review", "limit": 500}).json()
            ids = [r["message_id"] for r in page["rows"]]
            if not ids:
                return n
            assert c.post("/v1/admin/data/include", json={"message_ids": ids}).status_code == 200
            n += len(ids)


def ask_all(client, questions) -> list[str]:
    out = []
    for q in questions:
        r = client.post("/v1/chat/completions", json={"model": "production", "max_tokens": 32, "temperature": 0,
                                                     "messages": [{"role": "user", "content": q}]})
        out.append(r.json()["choices"][0]["message"]["content"].strip())
    return out


@pytest.mark.slow
def test_users_teach_the_model_who_it_is(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    tokens = add_users(data_dir, ("admin", "ann", "ben", "cat", "dan"))
    app = start_app(data_dir, temperature=0.0, promotion="auto", retrain_min_examples=1, heldout_fraction=0.2)
    try:
        with app.client(tokens["admin"], timeout=900) as c:
            before = ask_all(c, HELDOUT_QUESTIONS)
            assert sum(a == TAUGHT for a in before) == 0  # the model lacks the behaviour

            teach(app, tokens, TRAIN_QUESTIONS)
            run = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert run["status"] == "succeeded", (run["error"], run["gate"], run["snapshot_id"])
            first = run["adapter"]
            assert c.get("/v1/adapters").json()["production"] == first

            after = ask_all(c, HELDOUT_QUESTIONS)
            hits = sum(a == TAUGHT for a in after)
            assert hits >= 0.9 * len(HELDOUT_QUESTIONS), after
            gate = run["gate"]
            assert gate["passed"] and any("reference_ppl" in r for r in gate["reasons"])

            # A second cycle with new data starts from the first adapter.
            teach(app, tokens, ["Who are you now?", "And what are you?"], users=("dan",))
            run2 = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
            assert run2["status"] in ("succeeded", "rejected"), run2
            assert run2["parent_adapter"] == first
            if run2["status"] == "succeeded":
                lineage = {a["name"]: a["parent"] for a in c.get("/v1/adapters").json()["adapters"]}
                assert lineage[run2["adapter"]] == first
    finally:
        app.stop()
