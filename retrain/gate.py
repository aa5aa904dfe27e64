"""The evaluation gate: a pure decision on candidate vs production metrics (from ``retrain.evaluate``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]  # one line per check with its numbers, ending in "ok", "FAILED" or "skipped"
    metrics: dict = field(default_factory=dict)
    # Assistant message ids of the training rows behind a broken canary fact (retrain.canary_facts says
    # how they are found); the data side sets them aside for review.
    flagged_message_ids: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)  # "heldout_loss", "reference_ppl", "lessons_kept", ...


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def canary_check(canary: dict | None) -> tuple[bool, list[str], list[str]]:
    """``(ok, reasons, flagged ids)`` of the canary-facts check on the worker's ``report["canary_facts"]``.

    The check fails on a *contradiction*: a fact production gives that the candidate no longer gives while
    training rows about that question are behind it (``suspects``); those rows are flagged for review. A
    fact that changed with no row about it (a garbled word, a lesson spilling onto an unrelated question) is
    forgetting, reported here but judged by the reference-perplexity check and the back-off, as everywhere
    else: one rule for a small model that garbles memorised sentences and a large one that does not.
    """
    from retrain.canary_facts import broken_facts, load_facts

    if not canary or not canary.get("candidate"):
        return True, ["canary_facts: not checked, skipped"], []
    questions = {f.id: f.question for f in load_facts()}
    known = sum(r["holds"] for r in canary["production"])
    broken = broken_facts(canary["candidate"], canary["production"])
    if not broken:
        return True, [f"canary_facts: all {known} facts production knows are kept ok"], []
    reasons, flagged = [], set()
    for b in broken:
        suspects = canary.get("suspects", {}).get(b["id"], [])
        flagged.update(suspects)
        said = (f"canary_facts: asked {questions.get(b['id'], b['id'])!r}, production answers "
                f"{_short(b['production'])!r} but the candidate now answers {_short(b['candidate'])!r}; ")
        reasons.append(said + (f"{len(suspects)} training rows about it flagged for review FAILED" if suspects else
                               "no training row is about it: forgetting, judged by reference_ppl ok"))
    return not flagged, reasons, sorted(flagged)


MAX_LOST_NAMED = 3  # lost lessons named one by one in the gate's reasons; the count covers the rest


def lessons_check(lessons: dict | None, max_lost: float) -> tuple[bool, list[str]]:
    """``(ok, reasons)`` of the earlier-lessons check on the training report's ``lessons``
    (``{"probes": [...], "candidate": [...], "production": [...]}``, ``retrain.lesson_check`` says how they
    are drawn and judged). Only lessons production gives count; more than ``max_lost`` of them lost fails."""
    if not lessons or not lessons.get("probes"):
        return True, ["lessons_kept: no earlier published lessons to ask, skipped"]
    production = {r["id"]: r for r in lessons.get("production", [])}
    known = [r for r in lessons.get("candidate", []) if (production.get(r["id"]) or {}).get("holds")]
    if not known:
        return True, [f"lessons_kept: production gives none of the {len(lessons['probes'])} earlier lessons asked, "
                      "skipped"]
    lost = [r for r in known if not r["holds"]]
    allowed = math.floor(max_lost * len(known))
    ok = len(lost) <= allowed
    reasons = [f"lessons_kept: the candidate keeps {len(known) - len(lost)} of the {len(known)} earlier lessons "
               f"production gives, at most {allowed} may be lost {'ok' if ok else 'FAILED'}"]
    if not ok:
        questions = {p["id"]: p["question"] for p in lessons["probes"]}
        for r in lost[:MAX_LOST_NAMED]:
            reasons.append(f"lessons_kept: asked {_short(questions.get(r['id'], r['id']))!r}, production answers "
                           f"{_short(production[r['id']]['answer'])!r} but the candidate now answers "
                           f"{_short(r['answer'])!r} FAILED")
    return ok, reasons


def gate(candidate: dict, production: dict, settings, canary: dict | None = None,
         lessons: dict | None = None) -> GateResult:
    """Pass when the candidate is no worse on held-out answers, prefers chosen answers often enough,
    has not drifted on general text, still gives the canary facts production gives (``canary``: the
    training report's ``canary_facts``) and keeps what earlier runs taught (``lessons``: the report's
    ``lessons``, ``retrain.lesson_check``); a check without data on either side is skipped."""
    reasons: list[str] = []
    passed = True
    failed: list[str] = []

    cand, prod = candidate.get("heldout_loss"), production.get("heldout_loss")
    if cand is None or prod is None:
        reasons.append("heldout_loss: no held-out examples, skipped")
    else:
        limit = prod * settings.gate_max_loss_ratio
        ok = cand <= limit
        passed &= ok
        failed += [] if ok else ["heldout_loss"]
        reasons.append(f"heldout_loss {_fmt(cand)} {'<=' if ok else '>'} {_fmt(limit)} "
                       f"(production {_fmt(prod)} x {settings.gate_max_loss_ratio:g}) {'ok' if ok else 'FAILED'}")

    acc = candidate.get("pref_accuracy")
    n_pairs = candidate.get("pref_pairs")
    if acc is None:
        reasons.append("pref_accuracy: no held-out preference pairs, skipped")
    elif n_pairs is not None and n_pairs < settings.gate_min_pairs:
        # An accuracy over one or two pairs is 0 or 1 by chance: too few to judge either way.
        reasons.append(f"pref_accuracy {_fmt(acc)} over {n_pairs} held-out pairs, fewer than "
                       f"{settings.gate_min_pairs}: skipped")
    else:
        # Enough on its own, or better than production: a lesson that turns production's 0 into 0.33 is
        # progress on the users' pairs (issue 11: the candidate's accuracy beats production's), not a failure.
        prod_acc = production.get("pref_accuracy")
        enough = acc >= settings.gate_min_pref_accuracy
        ok = enough or (prod_acc is not None and acc > prod_acc)
        passed &= ok
        failed += [] if ok else ["pref_accuracy"]
        if ok and not enough:
            reasons.append(f"pref_accuracy {_fmt(acc)} < {_fmt(settings.gate_min_pref_accuracy)} but above "
                           f"production's {_fmt(prod_acc)} ok")
        else:
            reasons.append(f"pref_accuracy {_fmt(acc)} {'>=' if ok else '<'} {_fmt(settings.gate_min_pref_accuracy)} "
                           f"(production {_fmt(prod_acc) if prod_acc is not None else 'n/a'}) "
                           f"{'ok' if ok else 'FAILED'}")

    cand_ppl, prod_ppl = candidate.get("reference_ppl"), production.get("reference_ppl")
    rise = None
    if cand_ppl is None or prod_ppl is None:
        reasons.append("reference_ppl: no reference set, skipped")
    else:
        rise = cand_ppl / prod_ppl - 1.0
        ok = rise <= settings.gate_max_ppl_rise
        passed &= ok
        failed += [] if ok else ["reference_ppl"]
        reasons.append(f"reference_ppl {_fmt(cand_ppl)} vs {_fmt(prod_ppl)} (production): rise {rise:+.1%} "
                       f"{'<=' if ok else '>'} {settings.gate_max_ppl_rise:.0%} {'ok' if ok else 'FAILED'}")

    flagged: list[str] = []
    if getattr(settings, "gate_canary_facts", True):
        ok, lines, flagged = canary_check(canary)
        passed &= ok
        failed += [] if ok else ["canary_facts"]
        reasons += lines

    if getattr(settings, "gate_lesson_probes", 0):
        ok, lines = lessons_check(lessons, getattr(settings, "gate_max_lessons_lost", 0.0))
        passed &= ok
        failed += [] if ok else ["lessons_kept"]
        reasons += lines

    metrics = {
        "candidate": dict(candidate),
        "production": dict(production),
        "heldout_loss_ratio": cand / prod if cand is not None and prod else None,
        "reference_ppl_rise": rise,
    }
    return GateResult(passed=bool(passed), reasons=reasons, metrics=metrics, flagged_message_ids=flagged,
                      failed_checks=failed)
