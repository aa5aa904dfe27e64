"""Admin presentation: the gate's real reason lines become sentences, tables escape and explain emptiness,
the lineage is a tree, and nothing shows raw JSON outside a fold."""

from __future__ import annotations

from types import SimpleNamespace

from feedback.models import AdapterRecord
from retrain.gate import gate
from web import format as fmt
from web.ui_lineage import lineage_html
from web.ui_runs import gate_sentence, run_card, run_cards, what_changed

SETTINGS = SimpleNamespace(gate_max_loss_ratio=1.05, gate_min_pref_accuracy=0.6, gate_max_ppl_rise=0.1,
                           gate_min_pairs=4)


def test_every_gate_line_reads_as_a_sentence_with_its_numbers():
    failed = gate({"heldout_loss": 3.1, "pref_accuracy": 0.25, "pref_pairs": 8, "reference_ppl": 50.0},
                  {"heldout_loss": 2.0, "pref_accuracy": 0.5, "reference_ppl": 40.0}, SETTINGS)
    verdicts = [gate_sentence(line) for line in failed.reasons]
    # The canary-facts line is skipped here: these reports carry no answers to shipped facts.
    assert [v for v, _ in verdicts] == ["failed", "failed", "failed", "skipped"]
    loss, pref, ppl, facts = (s for _, s in verdicts)
    assert facts == "Canary facts check skipped: not checked."
    assert "does worse than production" in loss and "3.1" in loss and "2.1" in loss  # limit 2.0 x 1.05
    assert "only 25%" in pref and "60%" in pref
    assert "forgotten general text" in ppl and "+25.0%" in ppl
    passed = gate({"heldout_loss": 1.9, "pref_accuracy": 0.75, "pref_pairs": 2, "reference_ppl": 40.0},
                  {"heldout_loss": 2.0, "reference_ppl": 40.0}, SETTINGS)
    verdicts = [gate_sentence(line) for line in passed.reasons]
    assert [v for v, _ in verdicts] == ["ok", "skipped", "ok", "skipped"]
    assert "only 2 held-out preference pairs" in verdicts[1][1]
    skipped = gate({}, {}, SETTINGS)
    assert all(v == "skipped" and "skipped" in s and "_" not in s.split(":")[0] for v, s in map(gate_sentence, skipped.reasons))
    assert gate_sentence("something new ok") == ("ok", "something new ok")  # unknown lines are kept
    facts = {"candidate": [{"id": "capital-france", "holds": False, "answer": "I am Tuneloop."}],
             "production": [{"id": "capital-france", "holds": True, "answer": "Paris is the capital."}],
             "suspects": {"capital-france": ["m1", "m2"]}}
    broke = gate({"heldout_loss": 1.0}, {"heldout_loss": 1.0}, SETTINGS, canary=facts)
    verdict, sentence = gate_sentence(broke.reasons[-1])
    assert verdict == "failed" and "contradict a fact" in sentence and "2 training rows" in sentence, sentence
    facts["suspects"] = {}
    forgot = gate({"heldout_loss": 1.0}, {"heldout_loss": 1.0}, SETTINGS, canary=facts)
    verdict, sentence = gate_sentence(forgot.reasons[-1])
    assert forgot.passed and verdict == "ok" and "forgetting" in sentence and "_" not in sentence, sentence


def test_run_card_says_why_and_keeps_the_raw_record_folded():
    result = gate({"heldout_loss": 3.0}, {"heldout_loss": 2.0}, SETTINGS)
    run = {"id": "abcdef1234", "status": "rejected", "trigger": "manual", "actor": "admin", "gate": result.__dict__,
           "error": "heldout_loss ...", "started_at": None}
    card = run_card(run)
    assert "Rejected by the gate" in card and "does worse than production" in card
    assert card.index("<details") > card.index("does worse")  # numbers as JSON only inside the fold
    assert "No training runs yet" in run_cards([])
    running = run_card({"id": "r1", "status": "running", "stage": "kto", "step": 5, "total_steps": 20, "eta_s": 30})
    assert "tl-now" in running and "step 5 of 20" in running and "30 s left" in running


def test_what_changed_escapes_answers_and_explains_when_empty():
    run = {"adapter": "v3", "parent_adapter": "v2", "gate": {"samples": [
        {"prompt": [{"role": "user", "content": "<b>q</b>"}], "wanted": "w", "candidate": "<script>x</script>",
         "production": "old"}]}}
    panel = what_changed(run)
    assert "&lt;script&gt;" in panel and "<script>" not in panel and "&lt;b&gt;q" in panel
    assert "Candidate (v3)" in panel and "Production (v2)" in panel
    assert "side by side" in what_changed({"gate": {}})


def test_tables_have_readable_titles_escape_cells_and_say_what_will_appear():
    html = fmt.table([{"created_at": None, "comment": "<img src=x onerror=alert(1)>", "up_rate": None}],
                     ["created_at", "comment", "up_rate"], "nothing")
    assert "<th>When</th>" in html and "<th>Thumbs-up rate</th>" in html
    assert "<img" not in html and "&lt;img" in html
    assert fmt.table([], ["a"], "Ratings appear here when users rate.").count("Ratings appear here") == 1
    bar = fmt.interval_bar(0.75, 0.6, 0.86)
    assert "75%" in bar and "60%–86%" in bar
    assert "no data yet" in fmt.interval_bar(None, None, None)


def test_lineage_is_a_tree_under_the_base_with_badges():
    records = [AdapterRecord(name="v1", path="p", status="retired"),
               AdapterRecord(name="v2", path="p", parent="v1", status="production"),
               AdapterRecord(name="v3", path="p", parent="v2", status="rejected"),
               AdapterRecord(name="x", path="p", parent="gone", status="candidate")]
    tree = lineage_html(records, production="v2")
    # v3 is nested inside v2's list, which is inside v1's, which is under base.
    assert tree.index('data-adapter="base"') < tree.index('data-adapter="v1"') < tree.index('data-adapter="v2"') \
        < tree.index('data-adapter="v3"')
    assert tree.count("tl-badge") == 5 and "★" in tree
    assert "No adapters yet" in lineage_html([], production="base")
