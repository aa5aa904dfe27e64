"""The held-out split: by a hash of the conversation id, stable, about the requested fraction."""

from __future__ import annotations

import uuid

from retrain.clean import Example
from retrain.split import is_heldout, split


def test_stable_and_roughly_the_fraction():
    ids = [str(uuid.UUID(int=i * 7919 + 13)) for i in range(2000)]
    first = [is_heldout(c, 0.1) for c in ids]
    assert first == [is_heldout(c, 0.1) for c in ids]  # same ids, same side, every run
    assert 150 <= sum(first) <= 250
    assert sum(is_heldout(c, 0.3) for c in ids) > sum(first)
    assert not any(is_heldout(c, 0.0) for c in ids)


def test_a_conversation_stays_on_one_side_and_replay_trains():
    rows = [Example(prompt=[{"role": "user", "content": f"q{i}"}], completion=f"a{i}", conversation_id=f"conv-{i % 50}")
            for i in range(500)]
    rows.append(Example(prompt=[{"role": "user", "content": "old"}], completion="old", conversation_id="conv-0",
                        replay=True))
    train, heldout = split(rows, 0.2)
    assert len(train) + len(heldout) == len(rows)
    assert heldout, "some conversations must be held out"
    assert {e.conversation_id for e in train if not e.replay}.isdisjoint({e.conversation_id for e in heldout})
    assert any(e.replay for e in train) and not any(e.replay for e in heldout)
