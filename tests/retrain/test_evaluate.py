"""Evaluation metrics on the real demo model, checked against direct computation."""

from __future__ import annotations

import math

import pytest

from retrain.evaluate import completion_text, evaluate, load_reference
from serving.demo_model import _CHATS


@pytest.fixture(scope="module")
def demo(demo_model_dir):
    from serving.model_loading import load_base_model

    return load_base_model(str(demo_model_dir.model), "none")


def _row(q, a):
    return {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}


def test_reference_set_shape():
    ref = load_reference()
    assert 30 <= len(ref) <= 60
    for row in ref:
        assert row["messages"][-1]["role"] == "assistant" and row["messages"][-2]["role"] == "user"
    assert len({r["messages"][-2]["content"] for r in ref}) == len(ref)
    # Held apart from what the demo model was pre-trained on.
    assert not {r["messages"][-2]["content"] for r in ref} & {q for q, _ in _CHATS}


def test_heldout_loss_equals_direct_completion_loss(demo):
    import torch

    from serving.chat_format import render_prompt

    model, tok = demo
    q, a = _CHATS[3]
    metrics = evaluate(model, tok, [_row(q, a)], [], [])
    prompt = [{"role": "user", "content": q}]
    p = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    c = tok(completion_text(tok, prompt, a), add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100] * len(p) + c])
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([p + c]), labels=labels).loss.item()
    assert metrics["heldout_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["pref_accuracy"] is None and metrics["reference_ppl"] is None


def test_completion_is_cut_at_end_of_turn(demo):
    _, tok = demo
    text = completion_text(tok, [{"role": "user", "content": "hi"}], "Hello there.")
    assert text == "Hello there." + tok.eos_token


def test_padding_does_not_change_scores(demo):
    model, tok = demo
    rows = [_row(q, a) for q, a in _CHATS[:5]]
    batched = evaluate(model, tok, rows, [], [])["heldout_loss"]
    one = [evaluate(model, tok, [r], [], []) for r in rows]
    # Mean over all tokens equals the token-weighted mean of single-row losses.
    n = [len(tok(completion_text(tok, r["prompt"], r["completion"][0]["content"]))["input_ids"]) for r in rows]
    assert batched == pytest.approx(sum(m["heldout_loss"] * k for m, k in zip(one, n, strict=True)) / sum(n), rel=1e-4)


def test_pref_accuracy_and_reference_ppl(demo):
    model, tok = demo
    pairs = []
    for q, a in _CHATS[:6]:
        scrambled = " ".join(reversed(a.split()))
        pairs.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
                      "rejected": [{"role": "assistant", "content": scrambled}]})
    flipped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    ref = load_reference()
    metrics = evaluate(model, tok, [], pairs, ref)
    assert metrics["pref_accuracy"] == 1.0
    assert evaluate(model, tok, [], flipped, [])["pref_accuracy"] == 0.0
    assert metrics["heldout_loss"] is None and metrics["reference_examples"] == len(ref)
    # A perplexity, not a loss or a probability: above 1, and of the vocabulary's order (the demo has
    # memorised its own chats, so general reference text scores near or above uniform: ~4000 on 1024 tokens).
    assert 1.0 < metrics["reference_ppl"] < 20 * len(tok)
    assert math.isfinite(metrics["reference_ppl"])


def _full_logits_nll(model, tok, prompts, answers):
    """The straightforward computation (full logits of each row), to check the chunked one against."""
    import torch

    from serving.chat_format import render_prompt

    out = []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        c = tok(completion_text(tok, prompt, answer), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1)[torch.arange(len(p) - 1, len(p) + len(c) - 1), torch.tensor(c)]
        out.append((-float(lp.sum()), len(c)))
    return out


@pytest.mark.parametrize("per_row", [False, True], ids=["decoder+chunked-head", "model-forward-per-row"])
def test_chunked_nll_equals_full_logits(demo, monkeypatch, per_row):
    import retrain.evaluate as ev

    model, tok = demo
    monkeypatch.setattr(ev, "_has_logit_transform", lambda m: per_row)
    prompts = [[{"role": "user", "content": q}] for q, _ in _CHATS[:5]]
    answers = [a for _, a in _CHATS[:5]]
    answers[1] = answers[1] * 3  # rows of different lengths share a padded batch
    got = ev.completion_nll(model, tok, prompts, answers, batch_size=3, chunk_tokens=7)
    want = _full_logits_nll(model, tok, prompts, answers)
    assert [n for _, n in got] == [n for _, n in want]
    for (g, _), (w, _) in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-4)


def test_chunked_nll_sees_the_active_adapter(demo_model_dir, demo):
    from peft import PeftModel

    from retrain.evaluate import completion_nll

    base, tok = demo
    prompts, answers = [[{"role": "user", "content": _CHATS[0][0]}]], [_CHATS[0][1]]
    base_full = _full_logits_nll(base, tok, prompts, answers)[0][0]  # before peft injects LoRA layers into base
    model = PeftModel.from_pretrained(base, str(demo_model_dir.adapters / "demo-a"))
    try:
        with_adapter = completion_nll(model, tok, prompts, answers)
        assert with_adapter[0][0] == pytest.approx(_full_logits_nll(model, tok, prompts, answers)[0][0], rel=1e-4)
        with model.disable_adapter():
            without = completion_nll(model, tok, prompts, answers)
        assert without[0][0] == pytest.approx(base_full, rel=1e-4)
        assert with_adapter[0][0] != pytest.approx(without[0][0], rel=1e-4)
    finally:
        model.unload()
