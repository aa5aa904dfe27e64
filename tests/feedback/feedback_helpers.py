"""Builders of chat turns shared by the store tests."""

from __future__ import annotations

import uuid

from feedback.models import TurnRecord

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def make_turn(conversation_id: str, messages: list[dict], answer: str, *, who: str = "alice", adapter: str = "demo-a",
              message_id: str | None = None, **extra) -> TurnRecord:
    return TurnRecord(
        conversation_id=conversation_id, user=who, request_messages=messages,
        assistant_message_id=message_id or uuid.uuid4().hex, answer=answer, adapter=adapter, base_model="tiny",
        sampling={"temperature": 0.7, "top_p": 0.95}, latency_ms=12.5, first_token_ms=3.0, prompt_tokens=7,
        completion_tokens=5, finish_reason="stop", **extra)
