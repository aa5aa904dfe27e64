"""Who did what comes from the token, never from the request body."""

from __future__ import annotations

from tests.web.conftest import seed_data_dir, start_app
from web.auth import UserDirectory


def test_a_user_cannot_rate_or_chat_as_another_user(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    seed_data_dir(data_dir, demo_model_dir)
    users = UserDirectory(data_dir / "users.toml")
    users.add_user("ann", "ann-password", "user")
    users.add_user("bob", "bob-password", "user")
    bob = users.create_token("bob")
    app = start_app(data_dir)
    try:
        with app.client(bob) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 3, "user": "ann"})
            message_id = r.json()["id"]
            assert c.post("/v1/feedback", json={"message_id": message_id, "rating": "up",
                                                "user": "ann"}).status_code == 200
        assert app.ctx.store.get_message(message_id).user == "bob"
        rated = [e for e in app.ctx.store.rated_examples() if e.message_id == message_id]
        assert [e.user for e in rated] == ["bob"]
    finally:
        app.stop()
