"""Blind side-by-side battles: pick two adapters, randomise sides, hide names until the vote."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from feedback.store import FeedbackStore
from serving.backend import Backend
from serving.errors import BadRequest
from serving.types import BASE, PRODUCTION, ChatStream, Message, SamplingParams
from web.chat import RequestLimits, new_id


class TooManyBattles(Exception):
    """The user already has ``arena_battles_per_user`` battles generating (HTTP 429)."""


@dataclass(frozen=True)
class Matchup:
    battle_id: str
    adapter_a: str
    adapter_b: str


class ArenaService:
    def __init__(self, backend: Backend, store: FeedbackStore, system_prompt: str = "",
                 limits: RequestLimits | None = None, per_user: int = 2):
        self.backend = backend
        self.store = store
        self.system_prompt = system_prompt
        self.limits = limits or RequestLimits()
        self.per_user = per_user
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="arena")
        self._running: dict[str, int] = {}  # user -> battles generating now
        self._running_lock = threading.Lock()

    @contextmanager
    def slot(self, user: str) -> Iterator[None]:
        """Hold one of ``user``'s ``per_user`` battles for the block; ``TooManyBattles`` when none is free.

        The workers are shared by every user: without a cap one user's battles could take them all.
        """
        with self._running_lock:
            running = self._running.get(user, 0)
            if running >= self.per_user:
                raise TooManyBattles(f"you already have {running} arena battle(s) running, the most one user may "
                                     "have at once; try again when one has finished")
            self._running[user] = running + 1
        try:
            yield
        finally:  # a battle that ends, fails or is abandoned gives its slot back
            with self._running_lock:
                self._running[user] -= 1
                if not self._running[user]:
                    del self._running[user]

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

    def open_streams(self, messages: list[Message], m: Matchup, params: SamplingParams) -> dict[str, ChatStream]:
        """Both sides' streams, by side; when the second cannot start, the first is stopped, not left generating."""
        streams: dict[str, ChatStream] = {}
        try:
            for side, name in (("a", m.adapter_a), ("b", m.adapter_b)):
                streams[side] = self.backend.stream_chat(messages, name, params)
        except BaseException:
            for stream in streams.values():
                stream.close()
            raise
        return streams

    def fight(self, user: str, prompt, params: SamplingParams, adapters: tuple[str, str] | None = None):
        """Generate both answers (concurrently, so they batch together) and store the battle."""
        with self.slot(user):
            messages = self.messages_for(prompt)
            m = self.matchup(adapters)
            a, b = self.open_streams(messages, m, params).values()
            # Side b is read on a worker and side a on this request's own thread, so a battle takes one of the
            # shared workers, not two. Half a battle cannot be voted on: a side that fails stops the other.
            try:
                other = self._pool.submit(b.text)  # refused once the pool is shut down: both streams close
            except BaseException:
                a.close()
                b.close()
                raise
            other.add_done_callback(lambda f: f.exception() is not None and a.cancel())
            try:
                answer_a = a.text()
            except BaseException:
                b.cancel()
                raise
            answer_b = other.result()  # b's error, when a stopped because b failed
        self.record(user, m, messages, answer_a, answer_b)
        return m, answer_a, answer_b

    def record(self, user: str, m: Matchup, messages: list[Message], answer_a: str, answer_b: str) -> None:
        self.store.create_battle(m.battle_id, user, messages, m.adapter_a, answer_a, m.adapter_b, answer_b)
