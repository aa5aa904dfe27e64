"""Earlier lessons kept: a candidate must still give the answers earlier runs taught that production gives.

Why: teaching a new lesson can overwrite an earlier one without moving anything the other checks see. On
the four-cycle bench (``bench/continual.py``) each new lesson spilled back onto an earlier lesson's
questions ("Where do I put my car?" answered with the helpdesk sentence) while general text (reference
perplexity) and the shipped canary facts stayed fine, so the candidate was promoted and the team's earlier
lesson was gone without a word. This check asks candidate and production (greedy) a sample of what earlier
*published* runs taught (``retrain.dataset.lesson_probes``: their held-out rows first, which no adapter was
trained on, then their training rows); ``retrain.gate.lessons_check`` fails a candidate that loses more
than ``gate_max_lessons_lost`` of the answers production gives. A failure is retried with the gentler recipe,
as forgetting is (``retrain.cycle``); each lost lesson is named in the gate's reasons.

A probe holds when the answer has at least ``LESSON_OVERLAP`` of the content words of the taught answer's
opening ``PROBE_WORDS`` words: the greedy answer is short (48 tokens), a real model rephrases, and a lesson
lost to a spill shares few words with it. Like the canary facts, a probe production does not hold is not
held against the candidate, so one rule serves a real model and the demo model: answers users merely liked,
which production's greedy decoding does not repeat, count for nothing either way.
"""

from __future__ import annotations

from retrain.canary_facts import content_words, covered

LESSON_OVERLAP = 0.6
PROBE_WORDS = 24


def _taught_words(expected: str) -> set[str]:
    return content_words(" ".join(expected.split()[:PROBE_WORDS]))


def holds(expected: str, answer: str) -> bool | None:
    """Whether ``answer`` still gives the taught ``expected`` answer; None when it has no content words to check."""
    words = _taught_words(expected)
    return covered(words, answer) >= LESSON_OVERLAP if words else None


def probe_rows(rows: list[dict]) -> list[dict]:
    """The probes of a snapshot's ``lessons.jsonl`` rows: ``{"id", "prompt", "question", "expected"}``."""
    out = []
    for i, row in enumerate(rows):
        question = next((m.get("content") or "" for m in reversed(row["prompt"]) if m.get("role") == "user"), "")
        out.append({"id": row.get("source_id") or f"lesson-{i}", "prompt": row["prompt"], "question": question,
                    "expected": row["completion"][-1]["content"]})
    return out


def answer_probes(ask, probes: list[dict]) -> list[dict]:
    """``[{"id", "answer", "holds"}]`` from ``ask(list of prompts) -> list of texts`` (greedy)."""
    answers = ask([p["prompt"] for p in probes]) if probes else []
    return [{"id": p["id"], "answer": a, "holds": holds(p["expected"], a)} for p, a in zip(probes, answers, strict=True)]
