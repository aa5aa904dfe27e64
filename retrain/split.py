"""Held-out split by a hash of the conversation id: stable across runs, one conversation on one side."""

from __future__ import annotations

import hashlib

from retrain.clean import Example


def is_heldout(conversation_id: str, fraction: float) -> bool:
    """True for conversations whose hash falls in the held-out ``fraction``; never a random draw."""
    if not conversation_id or fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(conversation_id.encode()).digest()[:8], "big")
    return h < fraction * 2**64


def split(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, heldout). Replayed rows were training data before and stay on the training side."""
    train, heldout = [], []
    for e in examples:
        (heldout if not e.replay and is_heldout(e.conversation_id, fraction) else train).append(e)
    return train, heldout
