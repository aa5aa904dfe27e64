"""The Training tab's attempts table: every attempt in words, and model text shown as text."""

from __future__ import annotations

from web.run_details import attempts_markdown


def test_attempts_table_names_each_attempt_and_escapes_reasons():
    run = {"id": "r1", "status": "succeeded", "attempts": [
        {"attempt": 1, "status": "rejected", "recipe": {"learning_rate": 3e-3, "num_epochs": 15, "distill_scale": 1},
         "gate": {"reasons": ["heldout_loss 1 <= 2 ok", "reference_ppl rise +30% > 15% FAILED",
                              "canary_facts: candidate answers '<script>x</script> | y' FAILED"]}},
        {"attempt": 2, "status": "passed", "recipe": {"learning_rate": 1.5e-3, "num_epochs": 10.5, "distill_scale": 2},
         "gate": {"reasons": ["heldout_loss 1 <= 2 ok"]}}]}
    text = attempts_markdown(run)
    assert "2 attempt(s), succeeded" in text
    lines = text.splitlines()
    assert lines[4].startswith("| 1 | 0.003 | 15 | 1 | rejected |") and "reference_ppl" in lines[4]
    assert "heldout_loss" not in lines[4]  # a rejected attempt shows what failed
    assert lines[5].startswith("| 2 | 0.0015 | 10.5 | 2 | passed |")
    assert "<script>" not in text and "&lt;script&gt;" in text and "&#124; y" in text
    assert attempts_markdown({"id": "r2", "attempts": None}) == "No attempts recorded for this run."
