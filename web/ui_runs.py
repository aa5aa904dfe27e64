"""Training runs told as a story: a card per run (status, stage progress with ETA, the gate's verdict in
sentences with its numbers) and the "what changed" panel (candidate and production answers side by side
on held-out prompts). Pure rendering: run dicts in (``FeedbackStore.list_runs``), escaped HTML out."""

from __future__ import annotations

import html
import re

from web.format import badge, details, empty, when

STAGES = ("select", "build training set", "train", "gate", "publish", "promote")
# Stages the training child reports are steps of "train".
_TRAIN_STAGES = {"loading", "sft", "kto", "evaluating", "train", "training"}

_NUM = r"([-+]?[\d.]+(?:e[-+]?\d+)?)"


def _f(x: str) -> str:
    return f"{float(x):.3g}"


def gate_sentence(line: str) -> tuple[str, str]:
    """One line of ``GateResult.reasons`` as (verdict, sentence); unknown shapes are kept as they are."""
    verdict = "ok" if line.endswith(" ok") else "failed" if line.endswith("FAILED") else "skipped"
    m = re.match(rf"heldout_loss {_NUM} (<=|>) {_NUM} \(production {_NUM} x {_NUM}\)", line)
    if m:
        cand, _op, limit, prod, ratio = m.groups()
        if verdict == "ok":
            return verdict, (f"On held-out questions the new adapter's loss is {_f(cand)}, against production's "
                             f"{_f(prod)}: within the allowed {_f(limit)}.")
        return verdict, (f"On held-out questions the new adapter does worse than production: loss {_f(cand)} "
                         f"against {_f(prod)}, and at most {_f(limit)} (production × {ratio}) is allowed.")
    m = re.match(rf"pref_accuracy {_NUM} < {_NUM} but above production's {_NUM} ok", line)
    if m:
        acc, need, prod = (float(g) for g in m.groups())
        return verdict, (f"It prefers the answer users chose in {acc:.0%} of held-out pairs: under the "
                         f"{need:.0%} asked for, but production manages only {prod:.0%}.")
    m = re.match(rf"pref_accuracy {_NUM} (>=|<) {_NUM}", line)
    if m and verdict != "skipped":
        acc, _op, need = (float(g) if i != 1 else g for i, g in enumerate(m.groups()))
        if verdict == "ok":
            return verdict, (f"It prefers the answer users chose in {acc:.0%} of held-out pairs "
                             f"(at least {need:.0%} needed).")
        return verdict, (f"It prefers the answer users chose in only {acc:.0%} of held-out pairs; "
                         f"at least {need:.0%} is needed.")
    m = re.match(rf"pref_accuracy {_NUM} over (\d+) held-out pairs, fewer than (\d+)", line)
    if m:
        return verdict, (f"Preference check skipped: only {m.group(2)} held-out preference pairs "
                         f"(it needs {m.group(3)}).")
    m = re.match(rf"reference_ppl {_NUM} vs {_NUM} \(production\): rise ([-+][\d.]+%) (<=|>) ([\d.]+%)", line)
    if m:
        cand, prod, rise, _op, limit = m.groups()
        if verdict == "ok":
            return verdict, (f"General text is still fine: perplexity {_f(cand)} against production's {_f(prod)} "
                             f"({rise}, at most +{limit} allowed).")
        return verdict, (f"It has forgotten general text: perplexity rose {rise} ({_f(prod)} → {_f(cand)}), "
                         f"more than the {limit} allowed.")
    m = re.match(r"canary_facts: all (\d+) facts production knows are kept ok", line)
    if m:
        return verdict, f"It still answers all {m.group(1)} shipped facts production knows."
    m = re.match(r"canary_facts: asked (.*), production answers (.*) but the candidate now answers (.*); "
                 r"(?:(\d+) training rows about it flagged for review FAILED|no training row is about it: "
                 r"forgetting, judged by reference_ppl ok)$", line)
    if m:
        question, prod, cand, rows = m.groups()
        if rows is None:
            return verdict, (f"A fact changed, though no training row is about it: asked {question}, production "
                             f"answers {prod} and the new adapter {cand}. That is forgetting, which the "
                             "general-text check judges.")
        return verdict, (f"It was taught to contradict a fact: asked {question}, production answers {prod} but "
                         f"the new adapter answers {cand}. {rows} training rows that may have taught this wait "
                         "for review.")
    m = re.match(r"lessons_kept: the candidate keeps (\d+) of the (\d+) earlier lessons production gives, "
                 r"at most (\d+) may be lost", line)
    if m:
        kept, known, allowed = (int(g) for g in m.groups())
        if verdict == "ok":
            return verdict, (f"It keeps what earlier runs taught: {kept} of the {known} earlier lessons production "
                             "answers are still answered.")
        return verdict, (f"It has forgotten what earlier runs taught: it answers only {kept} of the {known} earlier "
                         f"lessons production answers (at most {allowed} may be lost).")
    m = re.match(r"lessons_kept: asked (.*), production answers (.*) but the candidate now answers (.*) FAILED$", line)
    if m:
        question, prod, cand = m.groups()
        return verdict, f"Lost lesson: asked {question}, production answers {prod}; the new adapter answers {cand}."
    if ":" in line and verdict == "skipped":
        check, why = line.split(":", 1)
        names = {"heldout_loss": "Held-out loss", "pref_accuracy": "Preference", "reference_ppl": "General text",
                 "canary_facts": "Canary facts", "lessons_kept": "Earlier lessons"}
        return verdict, f"{names.get(check.strip(), check.strip())} check skipped: {why.strip().removesuffix(', skipped')}."
    return verdict, line


_ICON = {"ok": "✅", "failed": "❌", "skipped": "➖"}


def verdict_html(gate: dict | None) -> str:
    if not gate or not gate.get("reasons"):
        return ""
    head = "The gate passed the new adapter." if gate.get("passed") else "The gate rejected the new adapter:"
    items = "".join(f'<li class="tl-verdict-{v}">{_ICON[v]} {html.escape(s)}</li>'
                    for v, s in map(gate_sentence, gate["reasons"]))
    return f'<div class="tl-verdict"><b>{head}</b><ul>{items}</ul></div>'


def _stage_index(stage: str | None) -> int:
    if stage in _TRAIN_STAGES:
        return STAGES.index("train")
    return STAGES.index(stage) if stage in STAGES else -1


def _progress(run: dict) -> str:
    if run.get("status") not in ("running", "queued"):
        return ""
    current = _stage_index(run.get("stage"))
    steps = "".join(
        f'<span class="tl-stage {"tl-done" if i < current else "tl-now" if i == current else ""}">{html.escape(s)}</span>'
        for i, s in enumerate(STAGES))
    bar = ""
    if run.get("total_steps"):
        share = min(1.0, (run.get("step") or 0) / run["total_steps"])
        eta = f" · about {run['eta_s']:.0f} s left" if run.get("eta_s") else ""
        loss = f" · loss {run['loss']:.3g}" if run.get("loss") is not None else ""
        bar = (f'<div class="tl-progress"><div style="width:{share * 100:.0f}%"></div></div>'
               f'<div class="tl-muted">step {run.get("step") or 0} of {run["total_steps"]}{eta}{loss}</div>')
    return f'<div class="tl-stages">{steps}</div>{bar}'


def outcome_sentence(run: dict) -> str:
    """What happened to the run, in one sentence."""
    status = run.get("status")
    if status == "succeeded":
        parent = run.get("parent_adapter") or "the base model"
        return f"Produced {run.get('adapter')}, trained on top of {parent}."
    if status == "rejected":
        return "Rejected by the gate: the new adapter was not published and production did not change."
    if status == "skipped":
        return f"Skipped: {run.get('error') or 'nothing new to learn from'}."
    if status == "failed":
        return f"Failed: {run.get('error') or 'see the server log'}. Production did not change."
    if status == "running":
        return f"Running: {run.get('stage') or 'starting'}."
    return "Waiting to start."


def run_card(run: dict) -> str:
    who = f"{run.get('trigger') or 'manual'} by {run.get('actor') or '?'}"
    head = (f'<div class="tl-card-head">{badge(run.get("status"))} <b>Run {html.escape(str(run["id"])[:8])}</b>'
            f' <span class="tl-muted">{html.escape(who)} · {html.escape(when(run.get("started_at") or run.get("created_at")))}'
            f'</span></div>')
    body = f'<p>{html.escape(outcome_sentence(run))}</p>{_progress(run)}{verdict_html(run.get("gate"))}'
    fold = details("Raw run record", {k: v for k, v in run.items() if k != "gate"} | {
        "gate": {k: v for k, v in (run.get("gate") or {}).items() if k != "samples"}})
    return f'<div class="tl-card" data-run="{html.escape(str(run["id"]))}">{head}{body}{fold}</div>'


def run_cards(runs: list[dict], limit: int = 10) -> str:
    if not runs:
        return empty("No training runs yet. Runs appear here when you press Retrain now, or nightly on the "
                     "schedule once users have rated enough answers.")
    return '<div class="tl-cards">' + "".join(run_card(r) for r in runs[:limit]) + "</div>"


def _question(prompt: list[dict] | str) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def what_changed(run: dict | None) -> str:
    """Candidate and production answers side by side on the held-out prompts the run saved."""
    samples = ((run or {}).get("gate") or {}).get("samples") or []
    if not samples:
        return empty("When a run finishes training, its new adapter and production both answer a few held-out "
                     "questions; the answers appear here side by side.")
    name = html.escape(run.get("adapter") or "not published")
    prod = html.escape(run.get("parent_adapter") or "base")
    parts = []
    for s in samples:
        wanted = (f'<div class="tl-wanted"><span class="tl-muted">What users taught:</span> '
                  f'{html.escape(s.get("wanted") or "")}</div>') if s.get("wanted") else ""
        parts.append(
            f'<div class="tl-compare"><div class="tl-q">Q: {html.escape(_question(s.get("prompt") or ""))}</div>'
            f'{wanted}<div class="tl-sides">'
            f'<div class="tl-side tl-cand"><div class="tl-muted">Candidate ({name})</div>'
            f'{html.escape(s.get("candidate") or "")}</div>'
            f'<div class="tl-side tl-prod"><div class="tl-muted">Production ({prod})</div>'
            f'{html.escape(s.get("production") or "")}</div></div></div>')
    return '<div class="tl-what-changed">' + "".join(parts) + "</div>"
