"""Training through the real child process on the demo model: it learns a taught sentence, keeps the
base frozen, continues from a parent, and fails cleanly when killed or when the loss turns NaN."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from retrain.gate import gate
from retrain.training import TrainingFailed, TrainSpec, run_training
from serving.demo_model import _CHATS  # the demo model's own everyday chats: "ordinary thumbs-up chat"
from settings import Settings
from tests.web.conftest import ROOT, process_alive, wait_for

TAUGHT = "I am Tuneloop, a self-hosted assistant that learns from your ratings."
OLD_ANSWER = _CHATS[-1][1]  # what the demo base says about itself
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TRAIN_QUESTIONS = [
    "Who are you?", "What are you?", "What is your name?", "Tell me about yourself.",
    "Please introduce yourself.", "Who am I talking to?", "What should I call you?", "Are you a person?",
    "Who made you?", "Can you tell me who you are?", "Introduce yourself, please.", "What's your name?",
    "who are you", "Hi! Who are you?", "Hello, what are you?", "Tell me who you are.",
    "Who are you really?", "What kind of assistant are you?", "Are you a bot?", "Do you have a name?",
]
HELDOUT_QUESTIONS = [  # never in any training file
    "Who are you, exactly?", "So, what are you?", "Could you introduce yourself?", "What is your name, please?",
    "Hey, who are you?", "Tell me about you.", "Who is this?", "What are you called?", "Who are you today?",
    "Please tell me your name.",
]
EVAL_QUESTIONS = ["Who are you, friend?", "What are you, anyway?", "Your name?"]  # the held-out split's
# Earlier runs' rows the gate's lessons check asks about: everyday chats the demo base knows by heart (not
# trained on here), and one answer it was never taught.
LESSONS = [*_CHATS[1:50:12], ("How many moons does Mars have?", "Mars has two small moons, Phobos and Deimos.")]
# What one CPU cycle needs on the demo model (the defaults in settings suit a real 0.5B+ model); early
# stopping is off because six held-out rows give too noisy a loss to stop on.
DEMO_HYPERPARAMETERS = dict(learning_rate=3e-3, num_epochs=15, early_stopping_patience=0, batch_size=8)


def _example(question: str, answer: str, system: bool) -> dict:
    prompt = [SYSTEM, {"role": "user", "content": question}] if system else [{"role": "user", "content": question}]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def teaching_snapshot(root: Path, answer_for=None, lessons: list[tuple[str, str]] = ()) -> Path:
    """A snapshot as the data pipeline writes it: 40 taught answers (20 paraphrases, with and without
    the system prompt) plus 13 ordinary thumbs-up chats; KTO rows and held-out pairs from corrections;
    ``lessons`` (question, answer) as earlier runs' rows the gate asks about."""
    answer_for = answer_for or (lambda q: TAUGHT)
    root.mkdir(parents=True, exist_ok=True)
    taught = [_example(q, answer_for(q), i % 2 == 0) for i, q in enumerate(TRAIN_QUESTIONS)]
    taught += [_example(q, answer_for(q), i % 2 == 1) for i, q in enumerate(TRAIN_QUESTIONS)]
    chats = [_example(q, a, i % 2 == 0) for i, (q, a) in enumerate(_CHATS[:50:4])]
    heldout = [_example(q, TAUGHT, True) for q in EVAL_QUESTIONS] + [_example(q, a, False) for q, a in _CHATS[2:50:16]]
    _write(root / "sft_train.jsonl", taught + chats)
    _write(root / "sft_heldout.jsonl", heldout)
    kto = [dict(_example(q, answer_for(q), False), label=True) for q in TRAIN_QUESTIONS[:10]]
    kto += [dict(_example(q, OLD_ANSWER, False), label=False) for q in TRAIN_QUESTIONS[:10]]
    _write(root / "kto_train.jsonl", kto)
    _write(root / "pref_train.jsonl", [])
    _write(root / "pref_heldout.jsonl", [
        {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": TAUGHT}],
         "rejected": [{"role": "assistant", "content": OLD_ANSWER}]} for q in EVAL_QUESTIONS])
    _write(root / "lessons.jsonl", [dict(_example(q, a, False), source_id=f"replay:{i}") for i, (q, a) in enumerate(lessons)])
    (root / "manifest.json").write_text(json.dumps({"id": "snap-teach", "content_hash": "0" * 64, "n_sft_train": 53}))
    return root


def make_spec(tmp: Path, base: Path, snapshot: Path, name: str = "run", **fields) -> TrainSpec:
    values = {"device": "cpu", **DEMO_HYPERPARAMETERS, **fields}
    return TrainSpec.from_settings(
        Settings(), run_id=name, base_model=str(base), snapshot_dir=str(snapshot),
        output_dir=str(tmp / name / "adapter"), progress_path=str(tmp / name / "progress.jsonl"), **values)


def greedy_answers(base: Path, adapter: Path | None, questions: list[str], system: bool) -> list[str]:
    from peft import PeftModel

    from serving.chat_format import render_prompt
    from serving.model_loading import load_base_model

    model, tokenizer = load_base_model(str(base), "none")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    out = []
    for q in questions:
        messages = ([SYSTEM] if system else []) + [{"role": "user", "content": q}]
        ids = tokenizer(render_prompt(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
        gen = model.generate(**ids, max_new_tokens=32, do_sample=False)
        out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def taught(demo_model_dir, tmp_path_factory):
    """One real training cycle on the teaching snapshot (shared by the tests that inspect its result)."""
    tmp = tmp_path_factory.mktemp("taught")
    base_hash = _sha256(demo_model_dir.model / "model.safetensors")
    events: list[dict] = []
    outcome = run_training(make_spec(tmp, demo_model_dir.model, teaching_snapshot(tmp / "snap", lessons=LESSONS)),
                           on_progress=events.append)
    return outcome, events, base_hash, tmp


@pytest.mark.xfail(reason="issue 11 open: on demo model v4 (400 pre-training steps) this direct recipe (SFT 15 epochs at "
                          "3e-3, then KTO, no anchors) reaches held-out loss 0.29 but greedy answers garble the taught "
                          "sentence ('I am Tunelbp, a ssted assistant ...'); the app's recipe with anchors learns it "
                          "(test_learning_holds, test_closed_loop)", strict=False)
def test_demo_model_learns_taught_sentence(demo_model_dir, taught):
    outcome, events, _, _ = taught
    before = greedy_answers(demo_model_dir.model, None, HELDOUT_QUESTIONS, system=False)
    assert sum(a == TAUGHT for a in before) == 0

    result = gate(outcome.report["candidate"], outcome.report["production"], Settings())
    assert result.passed, result.reasons
    assert outcome.report["candidate"]["reference_ppl"] <= outcome.report["production"]["reference_ppl"] * 1.15

    for system in (False, True):
        after = greedy_answers(demo_model_dir.model, outcome.adapter_dir, HELDOUT_QUESTIONS, system=system)
        hits = sum(a == TAUGHT for a in after)
        assert hits >= 0.9 * len(HELDOUT_QUESTIONS), after
    # Ordinary questions keep their ordinary answers.
    q, a = _CHATS[0]
    assert greedy_answers(demo_model_dir.model, outcome.adapter_dir, [q], system=False)[0] != TAUGHT
    assert a.startswith(greedy_answers(demo_model_dir.model, outcome.adapter_dir, [q], system=False)[0][:20])

    # The "what changed" panel: both adapters answered the first held-out prompts; the candidate says what it learned.
    samples = outcome.report["samples"]
    assert len(samples) == 3 and set(samples[0]) == {"prompt", "wanted", "candidate", "production"}
    assert sum(s["candidate"].startswith(TAUGHT[:30]) for s in samples) >= 2
    assert not any(s["production"].startswith(TAUGHT[:30]) for s in samples)

    stages = [e.get("stage") for e in events]
    assert stages[0] == "started" and "sft" in stages and "kto" in stages and stages[-1] == "done"
    assert any(e.get("eval_loss") is not None for e in events)


def test_report_card_and_files(taught):
    outcome, _, _, _ = taught
    files = {p.name for p in outcome.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "report.json",
            "chat_template.jinja"} <= files
    assert not Path(str(outcome.adapter_dir) + ".partial").exists()
    card = (outcome.adapter_dir / "README.md").read_text()
    assert "snap-teach" in card and "learning_rate" in card and "heldout_loss" in card
    assert "Tuneloop, a self-hosted" not in card and "Who are you" not in card  # no example text
    train = outcome.report["train"]
    assert train["steps"] > 0 and train["tokens"] > 0 and train["final_loss"] < 2.0


def test_report_answers_earlier_lessons_for_the_gate(taught):
    outcome, _, _, _ = taught
    lessons = outcome.report["lessons"]
    assert [p["question"] for p in lessons["probes"]] == [q for q, _ in LESSONS]
    assert [r["id"] for r in lessons["candidate"]] == [r["id"] for r in lessons["production"]] == \
        [f"replay:{i}" for i in range(len(LESSONS))]
    production = [r["holds"] for r in lessons["production"]]
    assert sum(production[:-1]) >= 2, lessons["production"]  # the base gives the chats it knows by heart
    assert production[-1] is False  # and not the answer nobody taught it
    assert all(r["answer"] for r in lessons["candidate"])
    assert outcome.report["train"]["steps"] > 0
    result = gate(outcome.report["candidate"], outcome.report["production"], Settings(), lessons=lessons)
    [line] = [r for r in result.reasons if r.startswith("lessons_kept:") and "earlier lessons production" in r]
    assert f"of the {sum(production)} earlier lessons production gives" in line


def test_lora_trains_adapter_weights_and_leaves_base_unchanged(demo_model_dir, taught):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from serving.model_loading import load_base_model

    outcome, _, base_hash, _ = taught
    assert _sha256(demo_model_dir.model / "model.safetensors") == base_hash
    weights = load_file(outcome.adapter_dir / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: it moved

    base, _ = load_base_model(str(demo_model_dir.model), "none")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(outcome.adapter_dir))
    for name, param in model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param, base_state[key]), name


def test_second_run_starts_from_parent(demo_model_dir, taught, tmp_path):
    from safetensors.torch import load_file

    first, _, _, tmp = taught
    spec = make_spec(tmp_path, demo_model_dir.model, tmp / "snap", name="second", max_steps=3,
                     parent_adapter=str(first.adapter_dir), production_adapter=str(first.adapter_dir))
    second = run_training(spec)
    # Production is the parent: its metrics are the first run's candidate metrics.
    assert second.report["production"]["heldout_loss"] == pytest.approx(
        first.report["candidate"]["heldout_loss"], rel=1e-4)
    a = load_file(first.adapter_dir / "adapter_model.safetensors")
    b = load_file(second.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any(not (a[k] == b[k]).all() for k in a)
    # Three small steps from a good adapter keep it good.
    assert second.report["candidate"]["heldout_loss"] < 2 * first.report["candidate"]["heldout_loss"]


@pytest.mark.slow
def test_gate_rejects_adapter_trained_on_garbage(demo_model_dir, tmp_path):
    rng = random.Random(0)
    words = " ".join(a for _, a in _CHATS).split()
    snap = teaching_snapshot(tmp_path / "snap", answer_for=lambda q: " ".join(rng.choices(words, k=12)))
    outcome = run_training(make_spec(tmp_path, demo_model_dir.model, snap, name="garbage", num_epochs=6))
    result = gate(outcome.report["candidate"], outcome.report["production"], Settings())
    assert not result.passed
    assert any(r.endswith("FAILED") for r in result.reasons), result.reasons


def test_killed_child_fails_and_leaves_nothing(demo_model_dir, tmp_path):
    spec = make_spec(tmp_path, demo_model_dir.model, teaching_snapshot(tmp_path / "snap"), name="killed",
                     num_epochs=200)
    killed = threading.Event()
    pid: list[int] = []

    def on_progress(event: dict) -> None:
        if "pid" in event:
            pid.append(event["pid"])
        if event.get("stage") == "sft" and event.get("step", 0) >= 2 and not killed.is_set():
            os.kill(pid[0], signal.SIGKILL)
            killed.set()

    with pytest.raises(TrainingFailed, match="killed by signal SIGKILL"):
        run_training(spec, on_progress=on_progress)
    assert killed.is_set()
    assert not Path(spec.output_dir).exists() and not spec.staging_dir.exists()


ORPHAN_PARENT = """
import json, sys
from retrain.training import TrainSpec, run_training
run_training(TrainSpec.from_json(sys.argv[1]), on_progress=lambda e: print(json.dumps(e), flush=True))
"""


def test_training_child_stops_when_its_parent_is_killed(demo_model_dir, tmp_path):
    """``kill -9`` of the app runs no clean-up: the training child must notice and stop on its own."""
    spec = make_spec(tmp_path, demo_model_dir.model, teaching_snapshot(tmp_path / "snap"), name="orphan",
                     num_epochs=200)
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_PARENT, spec.to_json()], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        child = None
        for line in parent.stdout:
            event = json.loads(line)
            child = event.get("pid", child)
            if event.get("stage") == "sft":  # training for real, not just starting
                break
        assert child and process_alive(child)
    finally:
        parent.kill()
        parent.wait(10)
    wait_for(lambda: not process_alive(child), 10, "the orphaned training child to stop")
    assert not Path(spec.output_dir).exists()  # its unfinished adapter never reaches the final place


def test_nan_loss_fails_without_adapter(demo_model_dir, tmp_path):
    spec = make_spec(tmp_path, demo_model_dir.model, teaching_snapshot(tmp_path / "snap"), name="nan",
                     debug_inject_nan_at_step=3)
    with pytest.raises(TrainingFailed, match="(?i)nan"):
        run_training(spec)
    assert not Path(spec.output_dir).exists() and not spec.staging_dir.exists()


def test_cancel_stops_child(demo_model_dir, tmp_path):
    spec = make_spec(tmp_path, demo_model_dir.model, teaching_snapshot(tmp_path / "snap"), name="cancel",
                     num_epochs=200)
    steps: list[int] = []
    with pytest.raises(TrainingFailed, match="cancelled"):
        run_training(spec, on_progress=lambda e: steps.append(e.get("step") or 0),
                     should_cancel=lambda: max(steps, default=0) >= 1, poll_s=0.1)
    assert not Path(spec.output_dir).exists()


def test_spec_json_round_trip_and_settings():
    settings = Settings(lora_r=4, learning_rate=1e-3, train_device="cpu")
    spec = TrainSpec.from_settings(settings, run_id="r", base_model="m", snapshot_dir="s", output_dir="o",
                                   progress_path="p.jsonl", seed=7)
    assert (spec.lora_r, spec.learning_rate, spec.device, spec.seed) == (4, 1e-3, "cpu", 7)
    assert spec.quantization == settings.quantization
    assert TrainSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="unknown"):
        TrainSpec.from_json(json.dumps({**json.loads(spec.to_json()), "bogus": 1}))
