"""Scrub personal data and secrets out of text before it becomes training data.

Hand-written regexes rather than a library: Presidio and scrubadub need spaCy models from the
network, and phonenumbers is not a dependency; these patterns are small, typed and tested.
Each match becomes a typed placeholder (``[EMAIL]``, ``[PHONE]``, ``[CARD]``, ``[IP]``, ``[SECRET]``);
placeholders match no pattern, so scrubbing twice changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

from feedback.models import Message

EMAIL = "[EMAIL]"
PHONE = "[PHONE]"
CARD = "[CARD]"
IP = "[IP]"
SECRET = "[SECRET]"

_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{8,}", re.I)
# Vendor key formats: OpenAI/Anthropic (sk-...), Hugging Face, GitHub, AWS access keys, Slack, Google, JWTs.
_VENDOR_KEY = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,})"  # the last: JSON Web Tokens
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Candidates only; ipaddress decides what is an address (rejects times like 12:30:45 and 999.1.1.1).
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
# 13-19 digits, optionally grouped by single spaces or dashes; kept only when the Luhn check passes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)")
_PHONE_US = re.compile(r"(?<![\w+])(?:1[ .-])?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)")
# Long tokens mixing letters and digits with high entropy: unknown-format keys and passwords.
_TOKEN = re.compile(r"(?<![\w/+=-])[A-Za-z0-9_+/=-]{24,}(?![\w/+=-])")
_MIN_ENTROPY_BITS = 3.5


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _ip(match: re.Match, version: int) -> str | None:
    try:
        ipaddress.ip_address(match.group(0)) if version == 6 else ipaddress.IPv4Address(match.group(0))
    except ValueError:
        return None
    return IP


def _card(match: re.Match) -> str | None:
    digits = re.sub(r"[ -]", "", match.group(0))
    return CARD if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _phone(match: re.Match) -> str | None:
    n = sum(ch.isdigit() for ch in match.group(0))
    return PHONE if 7 <= n <= 15 else None  # E.164 numbers have at most 15 digits


def _token(match: re.Match) -> str | None:
    s = match.group(0)
    mixed = any(c.isdigit() for c in s) and any(c.isalpha() for c in s)
    return SECRET if mixed and _entropy(s) >= _MIN_ENTROPY_BITS else None


# Order matters: secrets and emails first (their digits must not be read as phones or cards),
# cards before phones, and the entropy catch-all last.
_RULES: list[tuple[re.Pattern, Callable[[re.Match], str | None], str]] = [
    (_PRIVATE_KEY, lambda m: SECRET, SECRET),
    (_BEARER, lambda m: "Bearer " + SECRET, SECRET),
    (_VENDOR_KEY, lambda m: SECRET, SECRET),
    (_EMAIL, lambda m: EMAIL, EMAIL),
    (_IPV6, lambda m: _ip(m, 6), IP),
    (_IPV4, lambda m: _ip(m, 4), IP),
    (_CARD, _card, CARD),
    (_PHONE_INTL, _phone, PHONE),
    (_PHONE_US, _phone, PHONE),
    (_TOKEN, _token, SECRET),
]


# Names what scrub() does, for the cache of scrubbed texts (feedback/store_scrub.py): the patterns' source,
# plus a number to raise when the code around them changes what a text becomes.
_LOGIC_VERSION = 1
SCRUBBER_VERSION = f"{_LOGIC_VERSION}-" + hashlib.sha256(
    "\x1f".join(f"{p.pattern}|{p.flags}|{kind}" for p, _, kind in _RULES).encode()).hexdigest()[:16]


def scrub(text: str, counts: Counter | None = None) -> str:
    """``text`` with PII and secrets replaced by typed placeholders; ``counts`` tallies replacements by type."""
    if not text:
        return text
    for pattern, replace, kind in _RULES:

        def sub(m: re.Match, replace=replace, kind=kind) -> str:
            out = replace(m)
            if out is None:
                return m.group(0)
            if counts is not None:
                counts[kind] += 1
            return out

        text = pattern.sub(sub, text)
    return text


def scrub_messages(messages: list[Message], counts: Counter | None = None) -> list[Message]:
    """A copy of chat ``messages`` with every content scrubbed."""
    return [{**m, "content": scrub(m.get("content") or "", counts)} for m in messages]


class CachedScrubber:
    """scrub() that remembers: texts already scrubbed by this SCRUBBER_VERSION come from ``cache``.

    ``prime`` looks every text up at once and scrubs (and caches) only the ones not seen; calls then
    return the scrubbed text and add its replacement counts, exactly as scrubbing it again would.
    """

    def __init__(self, cache=None) -> None:
        self.cache = cache  # get_scrubbed / put_scrubbed (FeedbackStore); None: remember in this process only
        self.memo: dict[str, tuple[str, dict]] = {}
        self.n_scrubbed = 0

    def prime(self, texts) -> None:
        todo = {hashlib.sha256(t.encode()).hexdigest(): t for t in texts if t and t not in self.memo}
        found = self.cache.get_scrubbed(SCRUBBER_VERSION, list(todo)) if self.cache is not None and todo else {}
        new = {}
        for key, text in todo.items():
            if key in found:
                self.memo[text] = found[key]
            else:
                counts: Counter = Counter()
                new[key] = self.memo[text] = (scrub(text, counts), dict(counts))
        self.n_scrubbed += len(new)
        if self.cache is not None and new:
            self.cache.put_scrubbed(SCRUBBER_VERSION, new)

    def __call__(self, text: str, counts: Counter | None = None) -> str:
        if not text:
            return text
        if text not in self.memo:
            self.prime([text])
        out, found = self.memo[text]
        if counts is not None:
            counts.update(found)
        return out

    def messages(self, messages: list[Message], counts: Counter | None = None) -> list[Message]:
        return [{**m, "content": self(m.get("content") or "", counts)} for m in messages]
