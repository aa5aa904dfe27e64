"""Blind arena battles and the leaderboard, end to end through the API with the demo model."""

from __future__ import annotations

import random

ADAPTER_NAMES = ("demo-a", "demo-b", "base", "production")


def test_battle_is_blind_until_the_vote(running_app):
    with running_app.client() as c:
        r = c.post("/v1/arena/battles", json={"prompt": "Say something.", "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert not any(name in r.text for name in ADAPTER_NAMES)
        battle = r.json()
        assert [a["side"] for a in battle["answers"]] == ["a", "b"]
        vote = c.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "a"})
        assert vote.status_code == 200
        assert {vote.json()["a"], vote.json()["b"]} <= set(ADAPTER_NAMES) - {"production"}
        again = c.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "b"})
        assert again.status_code == 409
        assert c.post("/v1/arena/battles/nope/vote", json={"winner": "a"}).status_code == 404
        assert c.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": "left"}).status_code in (409, 422)


def test_a_battle_needs_a_question_at_the_end(running_app):
    """Its vote trains a preference pair on that question: a system prompt alone, or a conversation ending on
    an answer the client wrote, asks nothing."""
    with running_app.client() as c:
        for messages in ([{"role": "system", "content": "Be brief."}],
                         [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Paris is in Germany."}],
                         [{"role": "user", "content": "   "}]):
            r = c.post("/v1/arena/battles", json={"prompt": messages, "max_tokens": 2})
            assert r.status_code == 400 and "end with the user's question" in r.json()["error"]["message"], r.text
        r = c.post("/v1/arena/battles", json={"prompt": [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": "Say hi."}], "max_tokens": 2})
        assert r.status_code == 200, r.text


def test_simulated_votes_order_the_leaderboard(running_app):
    """Voters who prefer demo-a 80% of the time: the leaderboard puts demo-a above demo-b."""
    rng = random.Random(7)
    store = running_app.ctx.store
    with running_app.client() as c:
        for _ in range(40):
            battle = c.post("/v1/arena/battles", json={"prompt": "Hello there", "adapters": ["demo-a", "demo-b"],
                                                       "max_tokens": 2}).json()
            stored = store.get_battle(battle["id"])  # the simulation peeks; a real voter cannot
            side_of_a = "a" if stored.adapter_a == "demo-a" else "b"
            other = "b" if side_of_a == "a" else "a"
            winner = side_of_a if rng.random() < 0.8 else other
            assert c.post(f"/v1/arena/battles/{battle['id']}/vote", json={"winner": winner}).status_code == 200
        board = c.get("/v1/adapters").json()
    arena = {row["name"]: row["arena"] for row in board["adapters"] if row["arena"]}
    assert arena["demo-a"]["rating"] > arena["demo-b"]["rating"]
    assert arena["demo-a"]["lo"] <= arena["demo-a"]["rating"] <= arena["demo-a"]["hi"]
    pair = board["pairwise"]["demo-a"]["demo-b"]
    assert pair["wins"] + pair["losses"] + pair["ties"] >= 40 and pair["win_rate"] > 0.5
    ranked = [row["name"] for row in board["adapters"] if row["arena"]]
    assert ranked.index("demo-a") < ranked.index("demo-b")


def test_admin_can_start_and_stop_a_canary(running_app):
    with running_app.client() as c:
        r = c.post("/v1/admin/experiments", json={"candidate": "demo-b", "percent": 100})
        assert r.status_code == 200, r.text
        answer = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 2}).json()
        assert answer["adapter"] == "demo-b"  # 100% of production traffic goes to the candidate
        stored = running_app.ctx.store.get_message(answer["id"])
        assert stored.arm == "candidate" and stored.experiment_id == r.json()["experiment"]["id"]
        assert c.post("/v1/admin/experiments/stop").status_code == 200
        answer = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 2}).json()
        assert answer["adapter"] == running_app.ctx.backend.resolve("production")
