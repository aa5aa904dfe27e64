"""PII scrubbing: every planted kind is replaced by its placeholder; look-alikes are left alone."""

from __future__ import annotations

from collections import Counter

import pytest

from retrain.pii import luhn_valid, scrub, scrub_messages

# (planted value, placeholder it must become)
PLANTED = [
    ("jane.doe+tag@example.co.uk", "[EMAIL]"),
    ("+44 20 7946 0958", "[PHONE]"),
    ("+1-202-555-0143", "[PHONE]"),
    ("(415) 555-2671", "[PHONE]"),
    ("415.555.2671", "[PHONE]"),
    ("4111 1111 1111 1111", "[CARD]"),
    ("5500-0000-0000-0004", "[CARD]"),
    ("378282246310005", "[CARD]"),
    ("192.168.10.254", "[IP]"),
    ("2001:db8:85a3::8a2e:370:7334", "[IP]"),
    ("fe80::1", "[IP]"),
    ("sk-proj-Abc123def456GHI789jkl012", "[SECRET]"),
    ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz1234", "[SECRET]"),
    ("ghp_16C7e42F292c6912E7710c838347Ae178B4a", "[SECRET]"),
    ("AKIAIOSFODNN7EXAMPLE", "[SECRET]"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.abc.def", "Bearer [SECRET]"),
    ("q8Zt3vW9xK2mN7pR4sL6yB1cD5fG0hJ", "[SECRET]"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "[SECRET]"),
]


@pytest.mark.parametrize("value,placeholder", PLANTED)
def test_each_kind_is_replaced(value, placeholder):
    counts = Counter()
    out = scrub(f"my data: {value} thanks", counts)
    assert out == f"my data: {placeholder} thanks"
    assert sum(counts.values()) == 1


@pytest.mark.parametrize("text", [
    "order 4111 1111 1111 1112 arrived",  # Luhn-invalid card-like run
    "ticket 1234567890123 closed",  # 13 digits, Luhn-invalid
    "meet at 12:30:45 today",  # a time, not IPv6
    "version 999.1.2.3",  # not a valid IPv4
    "supercalifragilisticexpialidocious words",  # long but not a secret
    "see docs/section_two_and_three_point_four",  # path-like, no digits
    "there are 42 apples and 7 pears",
])
def test_look_alikes_are_left_alone(text):
    assert scrub(text) == text


def test_luhn():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_scrub_is_idempotent_and_scrubs_messages():
    messages = [{"role": "system", "content": "be nice"},
                {"role": "user", "content": "mail me at a@b.io or call +1 202 555 0143"}]
    once = scrub_messages(messages)
    assert once[1]["content"] == "mail me at [EMAIL] or call [PHONE]"
    assert scrub_messages(once) == once
    assert messages[1]["content"].startswith("mail me at a@b.io")  # input untouched


def test_a_selection_is_scrubbed_once_per_scrubber_version(tmp_path, monkeypatch):
    """A rebuild reads scrubbed texts from the store's cache: same result and counts, nothing scrubbed again;
    a new scrubber version scrubs everything afresh (its rules may differ)."""
    from datetime import UTC, datetime

    import retrain.pii as pii
    from feedback.models import RatedExample
    from feedback.store import FeedbackStore
    from retrain.dataset import Selection, scrub_selection

    rows = [RatedExample(message_id=f"m{i}", conversation_id=f"c{i}", user="u", adapter="a",
                         prompt=[{"role": "user", "content": f"mail jane{i}@example.com, card 4111 1111 1111 1111"}],
                         answer=f"call +1-202-555-0143 about {i}", rating="up", correction=None, implicit=False,
                         rated_at=datetime.now(UTC)) for i in range(5)]
    sel = Selection(rated=rows, pairs=[], previous_cutoff=None, cutoff=datetime.now(UTC))
    calls = []
    real = pii.scrub
    monkeypatch.setattr(pii, "scrub", lambda text, counts=None: calls.append(text) or real(text, counts))
    with FeedbackStore(tmp_path / "f.duckdb") as store:
        first_counts, again_counts = Counter(), Counter()
        first = scrub_selection(sel, first_counts, cache=store)
        assert len(calls) == 10
        again = scrub_selection(sel, again_counts, cache=store)
        assert len(calls) == 10  # all from the cache
        assert again == first and again_counts == first_counts == Counter({"[EMAIL]": 5, "[CARD]": 5, "[PHONE]": 5})
        assert "jane0" not in str(first) and "[EMAIL]" in first.rated[0].prompt[0]["content"]
        monkeypatch.setattr(pii, "SCRUBBER_VERSION", "changed")
        scrub_selection(sel, Counter(), cache=store)
        assert len(calls) == 20
