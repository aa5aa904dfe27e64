"""Ratings and corrections over the API: status codes, idempotence, stats, concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

HELLO = [{"role": "user", "content": "Tell me about yourself."}]


def chat(client, **extra) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_rate_rerate_and_correct(running_app):
    with running_app.client() as c:
        answer = chat(c)
        r = c.post("/v1/feedback", json={"message_id": answer["id"], "rating": "up"})
        assert r.status_code == 200 and r.json()["rating"] == "up"
        r = c.post("/v1/feedback", json={"message_id": answer["id"], "rating": "down", "comment": "meh",
                                         "correction": "I am Tuneloop."})
        assert r.status_code == 200
    rated = [e for e in running_app.ctx.store.rated_examples() if e.message_id == answer["id"]]
    assert len(rated) == 1  # re-rating replaced the first rating
    assert rated[0].rating == "down" and rated[0].correction == "I am Tuneloop."


def test_thumbs_down_reason_is_stored_and_checked_against_the_list(running_app):
    with running_app.client() as c:
        answer = chat(c)
        r = c.post("/v1/feedback", json={"message_id": answer["id"], "rating": "down", "reason": "too_long"})
        assert r.status_code == 200 and r.json()["reason"] == "too_long"
        for body in ({"rating": "down", "reason": "because"}, {"rating": "down", "reason": "<b>x</b>"},
                     {"rating": "down", "reason": ["wrong"]}, {"rating": "up", "reason": "wrong"}):
            r = c.post("/v1/feedback", json={"message_id": answer["id"], **body})
            assert r.status_code == 422 and r.json()["error"]["message"], (body, r.text)
    row = next(r for r in running_app.ctx.store.rated_conversations() if r["message_id"] == answer["id"])
    assert row["reason"] == "too_long"  # refused requests changed nothing


def test_feedback_errors(running_app):
    with running_app.client() as c:
        answer = chat(c)
        user_message_id = running_app.ctx.store.conversation(answer["conversation_id"])[0].id
        cases = [
            ({"message_id": "nope", "rating": "up"}, 404),
            ({"message_id": user_message_id, "rating": "up"}, 422),
            ({"message_id": answer["id"], "rating": "sideways"}, 422),
            ({"message_id": answer["id"]}, 422),
            ({"rating": "up"}, 422),
        ]
        for body, status in cases:
            r = c.post("/v1/feedback", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["message"]


def test_stats_count_per_adapter_and_day(running_app):
    with running_app.client() as c:
        before = c.get("/v1/feedback/stats").json()
        a = chat(c, model="demo-a")
        c.post("/v1/feedback", json={"message_id": a["id"], "rating": "up"})
        after = c.get("/v1/feedback/stats").json()
    assert after["totals"]["up"] == before["totals"]["up"] + 1
    per_adapter = {row["adapter"]: row for row in after["per_adapter"]}
    assert per_adapter["demo-a"]["up"] >= 1
    assert after["per_day"] and "day" in after["per_day"][0]


def test_sixteen_threads_chatting_and_rating_lose_nothing(running_app):
    store = running_app.ctx.store
    before = store.stats()["totals"]

    def one_user(i: int) -> str:
        with running_app.client() as c:
            answer = chat(c, model=["base", "demo-a", "demo-b", "production"][i % 4])
            r = c.post("/v1/feedback", json={"message_id": answer["id"], "rating": "up" if i % 2 else "down"})
            assert r.status_code == 200
            return answer["id"]

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one_user, range(48)))
    after = store.stats()["totals"]
    assert len(set(ids)) == 48
    assert after["assistant_messages"] - before["assistant_messages"] == 48
    assert (after["up"] - before["up"], after["down"] - before["down"]) == (24, 24)
    assert all(store.get_message(i) is not None for i in ids)
