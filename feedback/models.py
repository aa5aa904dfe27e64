"""Data shapes the store hands out and takes in; written down once, reused by web/ and retrain/."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Message = dict[str, str]  # OpenAI/TRL chat shape: {"role": ..., "content": ...}
RatingValue = Literal["up", "down"]


@dataclass(frozen=True)
class TurnRecord:
    """One answered chat turn as the chat service stores it."""

    conversation_id: str
    user: str
    request_messages: list[Message]  # the whole conversation sent, system prompt included
    assistant_message_id: str  # allocated before generation, so the API can return it as ``id``
    answer: str
    adapter: str  # concrete adapter that answered (alias resolved)
    base_model: str
    sampling: dict
    latency_ms: float
    first_token_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    replaces: str | None = None  # id of the assistant message this one regenerates
    experiment_id: str | None = None  # A/B traffic split this turn was assigned in
    arm: str | None = None  # "control" | "candidate"
    # "model" (generated freely) or "constrained" (under a response_format or forced tool call); None, in
    # turns journaled before it existed: read from ``sampling["structured"]`` (feedback.store_turns.ORIGINS).
    origin: str | None = None
    # What the implicit thumbs-down of a regenerate counts as (web.chat decides it by role: "trusted" or
    # "untrusted"; the store trusts users an admin trusts either way, read when the turn is written);
    # None: the store decides from what it knows (local mode's user, users an admin trusts).
    trust: str | None = None


@dataclass(frozen=True)
class Rating:
    message_id: str
    user: str
    rating: RatingValue
    comment: str | None = None
    correction: str | None = None
    implicit: bool = False  # True for the thumbs-down a regenerate implies
    created_at: datetime | None = None
    reason: str | None = None  # why a thumbs-down: one of feedback.store_core.RATING_REASONS
    review: str | None = None  # the answer's review state once stored (set by ``rate`` when given a trust)


@dataclass(frozen=True)
class ConversationSummary:
    """One line of a user's conversation list: a root conversation and its branches taken together."""

    id: str
    title: str  # the user's title, else the first question
    updated_at: datetime
    answers: int


@dataclass(frozen=True)
class ConversationView:
    """A conversation as its owner resumes it: the live messages and that user's judgements of them."""

    id: str  # the root id the chat continues under
    title: str
    messages: list[StoredMessage]
    ratings: dict[str, tuple[str, str | None]]  # message id -> (rating, reason)
    corrections: dict[str, str]  # message id -> the answer the user wrote instead


@dataclass(frozen=True)
class RatedExample:
    """A rated assistant answer with the conversation before it: the raw material of training sets."""

    message_id: str
    conversation_id: str
    user: str
    adapter: str
    prompt: list[Message]  # messages before the answer (system prompt included)
    answer: str
    rating: RatingValue | None  # the latest rating by anyone; None when only corrected
    correction: str | None  # the answer the user wanted instead
    implicit: bool
    rated_at: datetime
    trusted: bool = False  # judged by an admin or a trusted user, or approved by an admin: trains uncapped


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[Message]
    chosen: str
    rejected: str
    source: Literal["correction", "arena"]
    conversation_id: str
    user: str
    created_at: datetime | None = None


@dataclass
class AdapterRecord:
    """A registered adapter version (the registry; the files live under <data_dir>/adapters/<name>)."""

    name: str
    path: str
    parent: str | None = None
    snapshot_id: str | None = None
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    status: Literal["candidate", "production", "retired", "rejected", "archived"] = "candidate"
    created_at: datetime | None = None


@dataclass(frozen=True)
class StoredMessage:
    """One stored conversation message; assistant messages carry the facts of the turn that made them."""

    id: str
    conversation_id: str
    position: int  # index in the conversation; a regenerated answer shares its position with the one it replaces
    role: str
    content: str
    user: str
    created_at: datetime
    adapter: str | None = None
    base_model: str | None = None
    sampling: dict | None = None
    latency_ms: float | None = None
    first_token_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    experiment_id: str | None = None
    arm: str | None = None
    replaces: str | None = None
    superseded: bool = False


@dataclass(frozen=True)
class ArenaVote:
    battle_id: str
    user: str
    adapter_a: str
    adapter_b: str
    winner: Literal["a", "b", "tie", "both_bad"]
    created_at: datetime | None = None


@dataclass(frozen=True)
class Battle:
    """Two adapters' answers to one prompt, shown blind side by side (the arena)."""

    id: str
    user: str
    prompt: list[Message]
    adapter_a: str
    answer_a: str
    adapter_b: str
    answer_b: str
    created_at: datetime
    votes: list[ArenaVote] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A traffic split between production (control) and a candidate adapter."""

    id: str
    control: str
    candidate: str
    percent: float  # the candidate's current share of production traffic (ramp history: experiment_steps)
    started_at: datetime
    started_by: str
    ended_at: datetime | None = None
    ended_by: str | None = None
    outcome: str | None = None  # "promote" | "rollback" | "stopped" | "superseded" | ...
    reason: str | None = None
    numbers: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.ended_at is None
