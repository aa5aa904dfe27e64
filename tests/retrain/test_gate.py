"""The gate is pure: crafted metrics in, a decision with every number in its reasons out."""

from __future__ import annotations

import pytest

from retrain.gate import gate
from settings import Settings

PROD = {"heldout_loss": 2.0, "pref_accuracy": 0.4, "reference_ppl": 100.0}


@pytest.fixture
def settings():
    return Settings(gate_max_loss_ratio=1.0, gate_min_pref_accuracy=0.5, gate_max_ppl_rise=0.15)


def test_better_candidate_passes_with_numbers(settings):
    result = gate({"heldout_loss": 1.5, "pref_accuracy": 0.8, "reference_ppl": 110.0}, PROD, settings)
    assert result.passed
    assert result.reasons[0] == "heldout_loss 1.5 <= 2 (production 2 x 1) ok"
    assert result.reasons[1].startswith("pref_accuracy 0.8 >= 0.5") and result.reasons[1].endswith("ok")
    assert "rise +10.0%" in result.reasons[2] and result.reasons[2].endswith("ok")
    assert result.metrics["heldout_loss_ratio"] == pytest.approx(0.75)
    assert result.metrics["reference_ppl_rise"] == pytest.approx(0.10)


@pytest.mark.parametrize(("change", "failing"), [
    ({"heldout_loss": 2.01}, "heldout_loss"),
    ({"pref_accuracy": 0.4}, "pref_accuracy"),  # under 0.5 and no better than production's 0.4
    ({"reference_ppl": 115.01}, "reference_ppl"),
])
def test_each_check_can_reject(settings, change, failing):
    candidate = {"heldout_loss": 1.0, "pref_accuracy": 0.9, "reference_ppl": 100.0, **change}
    result = gate(candidate, PROD, settings)
    assert not result.passed
    failed = [r for r in result.reasons if r.endswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(failing)


def test_preference_below_the_bar_passes_only_when_it_beats_production(settings):
    from web.ui_runs import gate_sentence

    better = gate({"heldout_loss": 1.0, "pref_accuracy": 0.33, "reference_ppl": 100.0}, {**PROD, "pref_accuracy": 0.0},
                  settings)
    assert better.passed and better.reasons[1] == "pref_accuracy 0.33 < 0.5 but above production's 0 ok"
    assert gate_sentence(better.reasons[1]) == ("ok", "It prefers the answer users chose in 33% of held-out pairs: "
                                                      "under the 50% asked for, but production manages only 0%.")
    worse = gate({"heldout_loss": 1.0, "pref_accuracy": 0.3, "reference_ppl": 100.0}, PROD, settings)
    assert not worse.passed and worse.failed_checks == ["pref_accuracy"]


def test_boundaries_are_inclusive(settings):
    assert gate({"heldout_loss": 2.0, "pref_accuracy": 0.5, "reference_ppl": 115.0}, PROD, settings).passed


def test_loss_ratio_setting_is_used():
    relaxed = Settings(gate_max_loss_ratio=1.5)
    result = gate({"heldout_loss": 2.9, "pref_accuracy": None, "reference_ppl": 100.0}, PROD, relaxed)
    assert result.passed and "<= 3 (production 2 x 1.5) ok" in result.reasons[0]


def test_missing_data_is_skipped_not_failed(settings):
    result = gate({"heldout_loss": None, "pref_accuracy": None, "reference_ppl": 100.0},
                  {"heldout_loss": None, "pref_accuracy": None, "reference_ppl": 100.0}, settings)
    assert result.passed
    # No canary answers and no earlier lessons in these reports: both skipped.
    assert [r.endswith("skipped") for r in result.reasons] == [True, True, False, True, True]


def test_attempt_recipes_back_off():
    from retrain.cycle import _worth_retrying, attempt_recipe
    from retrain.gate import GateResult
    from settings import Settings

    s = Settings(learning_rate=2e-4, num_epochs=3.0)
    first, second, third = (attempt_recipe(s, n) for n in (1, 2, 3))
    assert (first["learning_rate"], first["num_epochs"], first["distill_scale"]) == (2e-4, 3.0, 1.0)
    assert second["learning_rate"] == 1e-4 and second["num_epochs"] == 2.1 and second["distill_scale"] == 2.0
    assert third["learning_rate"] == 5e-5 and third["distill_scale"] == 4.0
    assert attempt_recipe(Settings(num_epochs=1.0), 3)["num_epochs"] == 1.0  # never below one epoch
    retry = lambda *failed: _worth_retrying(GateResult(False, [], failed_checks=list(failed)))  # noqa: E731
    assert retry("reference_ppl") and retry("heldout_loss")
    assert not retry("pref_accuracy") and not retry("canary_facts")  # it fails only on rows that taught it
    flagged = GateResult(False, [], failed_checks=["reference_ppl", "canary_facts"], flagged_message_ids=["m1"])
    assert not _worth_retrying(flagged)  # rows taught it: for a reviewer
