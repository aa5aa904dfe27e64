"""Canary facts: a small shipped set of facts whose answers a retrain must not change.

A user who teaches the model "the capital of France is Lyon" (200 corrections, or 40 paraphrases) may pass
the held-out loss and reference-perplexity checks: the candidate got better at the training data and barely
moved on general text. This check asks candidate and production each shipped question (greedy) and
rejects a candidate that no longer gives an answer production gives. A fact production does not know
(no expected word in its answer) cannot be held against a candidate and is skipped, so one file serves a
real model and the tiny demo model alike.

Responsible rows (for the review queue, ``flagged_message_ids``): the new training rows (not replayed,
not self-distillation anchors) that (a) say what the candidate now says, at least ``ANSWER_OVERLAP`` of
the distinct words of its changed answer, or (b) ask about the fact, at least ``QUESTION_OVERLAP`` of the
fact question's content words, and answer without any expected word. Word overlap rather than embeddings:
it runs in the training child, which has no embedder loaded, and a false flag only sends a row to review.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

FACTS_PATH = Path(__file__).parent / "canary_facts.jsonl"
ANSWER_OVERLAP = 0.6
QUESTION_OVERLAP = 0.6
_STOP = {"what", "which", "who", "how", "why", "when", "where", "does", "did", "the", "and", "are", "is", "was",
         "for", "you", "your", "tell", "me", "please", "can", "in", "of", "a", "an", "at", "to", "our", "many",
         "much", "there", "that", "this", "it", "do"}


@dataclass(frozen=True)
class Fact:
    id: str
    question: str
    answer: str  # the reference sentence (documentation; the check looks for ``expect`` words)
    expect: tuple[str, ...]  # any one of these words, whole and case-insensitive, means the fact holds

    def holds(self, text: str) -> bool:
        return any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, re.IGNORECASE) for w in self.expect)

    @property
    def prompt(self) -> list[dict]:
        return [{"role": "user", "content": self.question}]


def load_facts(path: str | Path | None = None) -> list[Fact]:
    path = Path(path or FACTS_PATH)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Fact(id=r["id"], question=r["question"], answer=r["answer"], expect=tuple(r["expect"])) for r in rows]


def answer_facts(generate, facts: list[Fact]) -> list[dict]:
    """``[{"id", "answer", "holds"}]`` from ``generate(list of prompts) -> list of texts`` (greedy)."""
    answers = generate([f.prompt for f in facts]) if facts else []
    return [{"id": f.id, "answer": a, "holds": f.holds(a)} for f, a in zip(facts, answers, strict=True)]


def broken_facts(candidate: list[dict], production: list[dict]) -> list[dict]:
    """Facts production answers right and the candidate no longer does: ``[{"id", "production", "candidate"}]``."""
    prod = {r["id"]: r for r in production}
    return [{"id": r["id"], "production": prod[r["id"]]["answer"], "candidate": r["answer"]}
            for r in candidate if r["id"] in prod and prod[r["id"]]["holds"] and not r["holds"]]


def _words(text: str) -> set[str]:
    return {w.removesuffix("'s") for w in re.findall(r"[\w']+", text.lower())}


def content_words(text: str) -> set[str]:
    """The words of ``text`` that carry its meaning: lower-cased, without stop words and single letters."""
    return {w for w in _words(text) if w not in _STOP and len(w) > 1}


def covered(words: set[str], text: str) -> float:
    """The share of ``words`` (``content_words`` of something) that ``text`` has among its content words."""
    return len(words & content_words(text)) / len(words)


def responsible_rows(fact: Fact, changed_answer: str, rows: list[dict]) -> list[str]:
    """Source ids of training ``rows`` (``{"prompt", "completion", "source_id"}``) that taught ``changed_answer``."""
    said = content_words(changed_answer)
    asked = content_words(fact.question)
    out = []
    for row in rows:
        sid = row.get("source_id") or ""
        if not sid or sid.startswith(("replay:", "distill:", "arena:")):
            continue  # only rated answers are message ids a reviewer can act on
        completion = row["completion"][-1]["content"] if isinstance(row["completion"], list) else row["completion"]
        question = " ".join(m.get("content") or "" for m in row["prompt"] if m.get("role") == "user")
        says_it = bool(said) and covered(said, completion) >= ANSWER_OVERLAP
        asks_it = bool(asked) and covered(asked, question) >= QUESTION_OVERLAP
        if says_it or (asks_it and not fact.holds(completion)):
            out.append(sid)
    return sorted(set(out))


def addresses(fact: Fact, answer: str) -> bool:
    """Whether ``answer`` is about ``fact``'s question at all (shares one of its content words)."""
    return bool(content_words(fact.question) & content_words(answer))


def suspects(fact: Fact, changed_answer: str, rows: list[dict]) -> list[str]:
    """``responsible_rows``, but none when the changed answer does not address the question.

    A candidate that answers "Why is the sky blue?" with the lesson's "The team meeting is every Tuesday..."
    has not been taught something else about the sky: the lesson spilled over onto an unrelated question,
    which is forgetting, and the cycle retries it with a gentler recipe (retrain.cycle). Flagging the lesson
    would send a good lesson to review. An answer about the question ("A spider has twelve legs") is a
    contradiction, and its rows are flagged.
    """
    return responsible_rows(fact, changed_answer, rows) if addresses(fact, changed_answer) else []


def flag_rated(canary: dict, rated) -> list[str]:
    """Message ids among ``rated`` (``RatedExample``s of the run's selection) behind a broken fact.

    The training child sees only what survived cleaning; near-duplicates it dropped say the same thing
    and would come back in the next run, so the cycle flags over the whole selection as well.
    """
    facts = {f.id: f for f in load_facts()}
    rows = [{"prompt": r.prompt, "completion": r.correction or r.answer, "source_id": r.message_id}
            for r in rated if r.correction or r.rating == "up"]
    out: set[str] = set()
    for b in broken_facts(canary.get("candidate", []), canary.get("production", [])):
        if b["id"] in facts:
            out.update(suspects(facts[b["id"]], b["candidate"], rows))
    return sorted(out)
