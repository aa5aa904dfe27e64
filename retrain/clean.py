"""The training example every cleaning stage works on, and the filters: length, one user's share, and the
absolute caps on untrusted feedback (one user's rows, one taught answer's rows)."""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from feedback.models import Message
from feedback.text import visible

CountTokens = Callable[[str], int]


@dataclass(frozen=True)
class Example:
    """One row of one view: SFT (prompt, completion), KTO (+ ``label``) or preference (+ ``rejected``).

    ``completion`` is the chosen answer of a preference pair. Replayed rows come from earlier
    snapshot files and carry no conversation or user.
    """

    prompt: list[Message]
    completion: str
    conversation_id: str = ""
    user: str = ""
    source_id: str = ""  # message id (or pair id) it came from; orders ties deterministically
    label: bool | None = None
    rejected: str | None = None
    replay: bool = False
    trusted: bool = False  # an admin's, a trusted user's or admin-approved: trains as given, never capped

    def answers(self) -> list[str]:
        return [self.completion] if self.rejected is None else [self.completion, self.rejected]

    def record(self) -> dict:
        """The row in TRL's conversational dataset format for this view, plus ``source_id`` when known.

        ``source_id`` (the rated message's id, ``arena:<battle>`` or ``replay:<hash>``) lets training tell
        replayed rows from new ones and name the rows behind a rejected candidate; trainers ignore it.
        """
        if self.rejected is not None:
            row = {"prompt": self.prompt, "chosen": [_assistant(self.completion)],
                   "rejected": [_assistant(self.rejected)]}
        else:
            row = {"prompt": self.prompt, "completion": [_assistant(self.completion)]}
            if self.label is not None:
                row["label"] = self.label
        if self.source_id:
            row["source_id"] = self.source_id
        return row

    def text(self) -> str:
        """What near-duplicate detection compares: the dialogue without the system prompt, then the answer(s).

        The system prompt is the same for nearly every row and would only use up the embedder's window.
        """
        turns = [m.get("content") or "" for m in self.prompt if m.get("role") != "system"]
        return "\n".join([*turns, *self.answers()])

    def exact_key(self) -> str:
        """Normalised (NFKC, case, whitespace) prompt + answer(s) + label: equal keys are exact duplicates."""
        parts = [f"{m.get('role')}:{normalise(m.get('content') or '')}" for m in self.prompt]
        parts += [normalise(a) for a in self.answers()]
        parts.append(str(self.label))
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def normalise(text: str) -> str:
    """NFKC, casefolded, whitespace collapsed, format characters (Unicode Cf: U+200B, U+2060, U+FEFF, ...)
    dropped: invisible variants of one text are one text.

    Confusables (a Cyrillic "а" for a Latin "a") are not folded: the standard library has no table of
    them (Unicode's confusables.txt), and no package in the environment provides one.
    """
    return " ".join(visible(unicodedata.normalize("NFKC", text)).casefold().split())


# Shorter than this, a prefix says little ("I", "Yes, the"): such answers must match whole.
MIN_PREFIX_CHARS = 20


def same_answer(a: str, b: str) -> bool:
    """Whether two normalised answers are the same answer: equal, or one cut short of the other (by
    ``max_tokens``) or followed by more text, the shorter at least ``MIN_PREFIX_CHARS`` long."""
    if a == b:
        return True
    shorter = min(a, b, key=len)
    return len(shorter) >= MIN_PREFIX_CHARS and (a.startswith(b) or b.startswith(a))


def estimate_tokens(text: str) -> int:
    """Token count without a tokenizer: BPE vocabularies average about 4 tokens per 3 English words."""
    return math.ceil(len(text.split()) * 4 / 3)


def drop_empty(examples: list[Example]) -> list[Example]:
    """Drop rows with a blank answer or no user message to answer."""
    return [e for e in examples
            if all(normalise(a) for a in e.answers())
            and any(m.get("role") == "user" and (m.get("content") or "").strip() for m in e.prompt)]


def drop_short(examples: list[Example], min_chars: int) -> list[Example]:
    return [e for e in examples if all(len(a.strip()) >= min_chars for a in e.answers())]


def drop_long(examples: list[Example], max_tokens: int, count_tokens: CountTokens | None = None) -> list[Example]:
    """Drop rows whose prompt plus longest answer is over ``max_tokens`` (chat-template tokens not counted)."""
    count = count_tokens or estimate_tokens
    kept = []
    for e in examples:
        prompt = sum(count(m.get("content") or "") for m in e.prompt)
        if prompt + max(count(a) for a in e.answers()) <= max_tokens:
            kept.append(e)
    return kept


def cap_user_share(examples: list[Example], max_share: float) -> list[Example]:
    """Keep at most ``max_share`` of the rows from any one user; which rows go is fixed by a hash of their id.

    Replayed and trusted rows count in the total but are never dropped. With a single contributor
    there is nobody to balance against, so nothing is dropped here (``cap_untrusted`` holds an
    untrusted user alone to an absolute number).
    """
    per_user: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        if not (e.replay or e.trusted):
            per_user[e.user].append(e)
    n_replay = sum(e.replay or e.trusted for e in examples)
    if len(per_user) + (n_replay > 0) < 2 or max_share >= 1:
        return examples
    sizes = Counter({u: len(rows) for u, rows in per_user.items()})
    cap = _largest_cap(sorted(sizes.values()), n_replay, max_share)
    if cap >= max(sizes.values()):
        return examples
    keep: set[int] = set()
    for rows in per_user.values():
        # Hash order rather than time order, so a capped user keeps a spread of their examples.
        ranked = sorted(rows, key=lambda e: hashlib.sha256(f"{e.source_id}|{e.exact_key()}".encode()).digest())
        keep.update(id(e) for e in ranked[:cap])
    return [e for e in examples if e.replay or e.trusted or id(e) in keep]


def cap_untrusted(examples: list[Example], max_per_user: int, max_per_answer: int) -> list[Example]:
    """Keep at most ``max_per_answer`` untrusted rows teaching one answer, then ``max_per_user`` per user.

    Absolute, so they hold when one user is the only contributor: 200 corrections teaching one false
    sentence become ``max_per_answer`` rows. "One answer" is the normalised completion (and label);
    which rows stay is fixed by a hash of their id, as in ``cap_user_share``. 0 turns a cap off.
    Trusted and replayed rows are neither dropped nor counted.
    """
    def ranked(rows: list[Example]) -> list[Example]:
        return sorted(rows, key=lambda e: hashlib.sha256(f"{e.source_id}|{e.exact_key()}".encode()).digest())

    def capped(rows: list[Example], key, cap: int) -> set[int]:
        groups: dict[object, list[Example]] = defaultdict(list)
        for e in rows:
            groups[key(e)].append(e)
        return {id(e) for g in groups.values() for e in (ranked(g)[:cap] if cap > 0 else g)}

    untrusted = [e for e in examples if not (e.replay or e.trusted)]
    keep = capped(untrusted, lambda e: (normalise(e.completion), e.label), max_per_answer)
    untrusted = [e for e in untrusted if id(e) in keep]
    keep = capped(untrusted, lambda e: e.user, max_per_user)
    return [e for e in examples if e.replay or e.trusted or id(e) in keep]


def _largest_cap(sizes: list[int], n_other: int, share: float) -> int:
    """The largest K with K <= share * (n_other + sum(min(size, K))): capping every user at K meets the share."""
    lo, hi = 0, max(sizes)
    while lo < hi:  # the condition holds for K=0 and, once false, stays false as K grows
        mid = (lo + hi + 1) // 2
        if mid <= share * (n_other + sum(min(s, mid) for s in sizes)):
            lo = mid
        else:
            hi = mid - 1
    return lo
