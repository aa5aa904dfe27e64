"""/metrics after real traffic on two adapters: what an operator's Prometheus would scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(app) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the app's /metrics text."""
    with app.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_chat_ratings_arena_and_runs(running_app):
    before = scrape(running_app)
    with running_app.client() as c:
        ids = {}
        for adapter in ("demo-a", "demo-b"):
            r = c.post("/v1/chat/completions", json={"model": adapter, "max_tokens": 6,
                                                     "messages": [{"role": "user", "content": "Hello there"}]})
            assert r.status_code == 200, r.text
            ids[adapter] = r.json()["id"]
        with c.stream("POST", "/v1/chat/completions", json={"model": "demo-b", "max_tokens": 6, "stream": True,
                                                             "messages": [{"role": "user", "content": "Hi"}]}) as s:
            assert s.status_code == 200 and "[DONE]" in s.read().decode()
        assert c.post("/v1/feedback", json={"message_id": ids["demo-a"], "rating": "up"}).status_code == 200
        assert c.post("/v1/feedback", json={"message_id": ids["demo-b"], "rating": "down"}).status_code == 200
        battle = c.post("/v1/arena/battles", json={"prompt": "hi", "adapters": ["demo-a", "demo-b"], "max_tokens": 3})
        assert battle.status_code == 200, battle.text
        assert c.post(f"/v1/arena/battles/{battle.json()['id']}/vote", json={"winner": "a"}).status_code == 200
        # Too few new examples for the default retrain_min_examples: a cheap, skipped run.
        run = c.post("/v1/admin/retrain", json={"wait": True, "force": False}).json()["run"]
        assert run["status"] == "skipped"
        assert c.get("/v1/models", params={}).status_code == 200
        assert c.post("/v1/chat/completions", json={"model": "no-such", "messages": [
            {"role": "user", "content": "x"}]}).status_code == 404

    after = scrape(running_app)

    def delta(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tuneloop_chat_requests_total", adapter="demo-a") == 1
    assert delta("tuneloop_chat_requests_total", adapter="demo-b") == 2
    for adapter in ("demo-a", "demo-b"):
        assert 0 < delta("tuneloop_tokens_generated_total", adapter=adapter) <= 6 * 2
        assert delta("tuneloop_time_to_first_token_seconds_count", adapter=adapter) >= 1
        assert delta("tuneloop_time_to_first_token_seconds_sum", adapter=adapter) > 0
    assert delta("tuneloop_token_latency_seconds_count", adapter="demo-b") >= 1
    assert delta("tuneloop_ratings_total", adapter="demo-a", rating="up") == 1
    assert delta("tuneloop_ratings_total", adapter="demo-b", rating="down") == 1
    assert delta("tuneloop_arena_votes_total", winner="a") == 1
    assert delta("tuneloop_training_runs_total", status="skipped") == 1
    assert delta("tuneloop_http_errors_total", status="404") == 1
    assert value(after, "tuneloop_active_adapters") >= 2  # demo-a and demo-b
