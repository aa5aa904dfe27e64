"""Prometheus metrics: one registry per app, so tests can build several apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneloop_chat_requests", "Chat turns served", ["adapter"], registry=r)
        self.tokens = Counter("tuneloop_tokens_generated", "Tokens generated", ["adapter"], registry=r)
        self.ttft = Histogram(
            "tuneloop_time_to_first_token_seconds", "Time to first token", ["adapter"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.token_latency = Histogram(
            "tuneloop_token_latency_seconds", "Mean time per generated token of a turn", ["adapter"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
        self.http_errors = Counter("tuneloop_http_errors", "Error responses", ["status"], registry=r)
        self.ratings = Counter("tuneloop_ratings", "Ratings stored", ["adapter", "rating"], registry=r)
        self.arena_votes = Counter("tuneloop_arena_votes", "Arena votes stored", ["winner"], registry=r)
        self.training_runs = Counter("tuneloop_training_runs", "Training runs by outcome", ["status"], registry=r)
        self.active_adapters = Gauge("tuneloop_active_adapters", "Adapters loaded in the backend", registry=r)

    def observe_turn(self, _requested: str, turn) -> None:
        adapter = turn.adapter
        self.requests.labels(adapter).inc()
        self.tokens.labels(adapter).inc(turn.completion_tokens)
        if turn.first_token_ms is not None:
            self.ttft.labels(adapter).observe(turn.first_token_ms / 1000.0)
        if turn.completion_tokens > 1 and turn.first_token_ms is not None:
            per_token = (turn.latency_ms - turn.first_token_ms) / 1000.0 / (turn.completion_tokens - 1)
            self.token_latency.labels(adapter).observe(max(per_token, 0.0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
