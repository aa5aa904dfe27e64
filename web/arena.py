"""Blind side-by-side battles: pick two adapters, randomise sides, hide names until the vote."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from feedback.store import FeedbackStore
from serving.backend import Backend
from serving.errors import BadRequest
from serving.types import BASE, PRODUCTION, Message, SamplingParams
from web.chat import RequestLimits, new_id


@dataclass(frozen=True)
class Matchup:
    battle_id: str
    adapter_a: str
    adapter_b: str


class ArenaService:
    def __init__(self, backend: Backend, store: FeedbackStore, system_prompt: str = "",
                 limits: RequestLimits | None = None):
        self.backend = backend
        self.store = store
        self.system_prompt = system_prompt
        self.limits = limits or RequestLimits()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="arena")

    def default_pair(self) -> tuple[str, str]:
        """Production against the newest candidate; without one, production against ``base``."""
        production = self.backend.resolve(PRODUCTION)
        loaded = {a.name for a in self.backend.list_adapters()}
        candidates = [
            r.name for r in sorted(self.store.list_adapter_records(), key=lambda r: r.created_at or 0, reverse=True)
            if r.status == "candidate" and r.name in loaded and r.name != production
        ]
        if candidates:
            return production, candidates[0]
        if production != BASE:
            return production, BASE
        others = sorted(n for n in loaded if n not in (BASE, PRODUCTION))
        return (BASE, others[0]) if others else (BASE, BASE)

    def matchup(self, adapters: tuple[str, str] | None = None) -> Matchup:
        first, second = adapters or self.default_pair()
        first, second = self.backend.resolve(first), self.backend.resolve(second)
        if first == second:
            raise BadRequest(f"an arena battle needs two different adapters; both are {first!r}")
        if random.random() < 0.5:  # sides randomised, so position cannot give the adapter away
            first, second = second, first
        return Matchup(new_id(), first, second)

    def messages_for(self, prompt: str | list[Message]) -> list[Message]:
        """The battle's messages, bounded like a chat request before anything is tokenized."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise BadRequest("prompt is empty")
            messages = [{"role": "user", "content": prompt}]
            messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + messages
        else:
            messages = list(prompt)
            # A battle compares two answers to a question, and its vote trains a pair on that question: a
            # conversation that ends on anything but the user's turn asks nothing (or asks to continue an
            # answer the client wrote).
            if not messages or messages[-1].get("role") != "user" or not str(messages[-1].get("content") or "").strip():
                raise BadRequest("an arena battle's messages must end with the user's question")
        self.limits.check(messages)
        return messages

    def fight(self, user: str, prompt, params: SamplingParams, adapters: tuple[str, str] | None = None):
        """Generate both answers (concurrently, so they batch together) and store the battle."""
        messages = self.messages_for(prompt)
        m = self.matchup(adapters)
        streams = [self.backend.stream_chat(messages, name, params) for name in (m.adapter_a, m.adapter_b)]
        answer_a, answer_b = self._pool.map(lambda s: s.text(), streams)
        self.record(user, m, messages, answer_a, answer_b)
        return m, answer_a, answer_b

    def record(self, user: str, m: Matchup, messages: list[Message], answer_a: str, answer_b: str) -> None:
        self.store.create_battle(m.battle_id, user, messages, m.adapter_a, answer_a, m.adapter_b, answer_b)
