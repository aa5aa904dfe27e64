"""The earlier-lessons gate check: when a taught answer still holds, and how a lost lesson fails the gate,
retries the run and reads in the Training tab. The probes' data side is in test_dataset.py, the real
training child's answers in test_training.py."""

from __future__ import annotations

from retrain.cycle import _worth_retrying
from retrain.gate import gate, lessons_check
from retrain.lesson_check import holds
from settings import Settings
from web.ui_runs import gate_sentence

# Lessons of a team's own, not the ones the demo defaults were tuned on (tests/retrain/lessons.py).
BOILER = "The boiler room key hangs in the blue cabinet next to reception."
FERRY = "The staff ferry leaves pier seven at quarter past eight on weekdays."
METRICS = {"heldout_loss": 1.0, "reference_ppl": 10.0}


def test_a_taught_answer_holds_when_its_content_words_are_there():
    assert holds(BOILER, BOILER)
    assert holds(BOILER, "The key to the boiler room hangs in the blue cabinet, next to reception.")  # rephrased
    assert not holds(BOILER, FERRY)  # another lesson spilled onto the question
    assert not holds(BOILER, "I do not know.")
    assert holds("It is.", "It is not.") is None  # no content words: such a probe counts for nothing


def lessons(candidate_says: list[str], production_says: list[str], expected: list[str]) -> dict:
    ids = [f"m{i}" for i in range(len(expected))]
    probes = [{"id": i, "question": f"question {i}?", "expected": e} for i, e in zip(ids, expected, strict=True)]
    return {"probes": probes,
            "candidate": [{"id": i, "answer": a, "holds": holds(e, a)}
                          for i, a, e in zip(ids, candidate_says, expected, strict=True)],
            "production": [{"id": i, "answer": a, "holds": holds(e, a)}
                           for i, a, e in zip(ids, production_says, expected, strict=True)]}


def test_losing_an_earlier_lesson_fails_the_gate_names_it_and_is_retried():
    taught = [BOILER] * 5 + [FERRY] * 5
    report = lessons([BOILER] * 5 + [BOILER] * 3 + [FERRY] * 2, taught, taught)  # ferry spilled over 3 times
    result = gate(METRICS, METRICS, Settings(gate_max_lessons_lost=0.1), lessons=report)
    assert not result.passed and result.failed_checks == ["lessons_kept"]
    summary, *named = [r for r in result.reasons if r.startswith("lessons_kept")]
    assert summary == ("lessons_kept: the candidate keeps 7 of the 10 earlier lessons production gives, "
                       "at most 1 may be lost FAILED")
    assert len(named) == 3 and all("pier seven" in r and "blue cabinet" in r for r in named)
    assert _worth_retrying(result)  # forgetting: the next attempt backs off
    verdict, sentence = gate_sentence(summary)
    assert verdict == "failed" and "7 of the 10" in sentence and "forgotten what earlier runs taught" in sentence
    verdict, sentence = gate_sentence(named[0])
    assert verdict == "failed" and sentence.startswith("Lost lesson: asked 'question m5?'")


def test_within_the_allowance_and_unknown_lessons_pass():
    taught = [BOILER] * 10
    one_lost = lessons([BOILER] * 9 + [FERRY], taught, taught)
    result = gate(METRICS, METRICS, Settings(gate_max_lessons_lost=0.1), lessons=one_lost)
    assert result.passed and "keeps 9 of the 10" in result.reasons[-1]
    assert gate_sentence(result.reasons[-1])[0] == "ok"
    assert not gate(METRICS, METRICS, Settings(gate_max_lessons_lost=0.0), lessons=one_lost).passed
    # Production never gave these answers (liked answers its greedy decoding does not repeat): nothing to lose.
    unknown = lessons([FERRY] * 4, ["I am not sure."] * 4, [BOILER] * 4)
    ok, reasons = lessons_check(unknown, 0.0)
    assert ok and reasons == ["lessons_kept: production gives none of the 4 earlier lessons asked, skipped"]
    ok, reasons = lessons_check(None, 0.0)  # a first run, or a report from before the check
    assert ok and reasons[0].endswith("skipped")
    assert gate_sentence(reasons[0]) == ("skipped", "Earlier lessons check skipped: no earlier published lessons "
                                                    "to ask.")
    off = gate(METRICS, METRICS, Settings(gate_lesson_probes=0), lessons=lessons([FERRY], [BOILER], [BOILER]))
    assert off.passed and not [r for r in off.reasons if r.startswith("lessons_kept")]


def test_a_hostile_lesson_is_shown_as_text_in_the_training_tab():
    # Probes quote users' own questions and the model's answers: in the verdict they are text, never markup,
    # and a question that mimics the reason's wording still reads as a failed check.
    from dataclasses import asdict

    from web.ui_runs import verdict_html

    question = "<script>alert(1)</script>, production answers 'x' but the candidate now answers 'y'"
    report = lessons([FERRY], [BOILER], [BOILER])
    report["probes"][0]["question"] = question
    result = gate(METRICS, METRICS, Settings(gate_max_lessons_lost=0.0), lessons=report)
    assert not result.passed and any("alert(1)" in r for r in result.reasons)
    shown = verdict_html(asdict(result))
    assert "&lt;script&gt;" in shown and "<script>" not in shown
    assert [gate_sentence(r)[0] for r in result.reasons if r.startswith("lessons_kept")] == ["failed", "failed"]
