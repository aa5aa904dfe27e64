"""A run's attempts in words, for the Training tab: one row per attempt with its recipe and the gate's verdict."""

from __future__ import annotations

from html import escape


def attempts_markdown(run: dict | None) -> str:
    """A markdown table of ``run["attempts"]``; every text cell escaped (gate reasons may quote model output)."""
    attempts = (run or {}).get("attempts") or []
    if not attempts:
        return "No attempts recorded for this run."
    lines = [f"**Run `{escape(str(run.get('id')))}`: {len(attempts)} attempt(s), {escape(str(run.get('status')))}**",
             "", "| attempt | learning rate | epochs | anchors x | result | gate |", "|---|---|---|---|---|---|"]
    for a in attempts:
        recipe = a.get("recipe") or {}
        gate = a.get("gate") or {}
        why = [r for r in gate.get("reasons", []) if r.endswith("FAILED")] or gate.get("reasons", [])[:1]
        reasons = "<br>".join(escape(r).replace("|", "&#124;") for r in why) or escape(a.get("error") or "")
        lines.append(f"| {a.get('attempt')} | {recipe.get('learning_rate', 0):.3g} | {recipe.get('num_epochs')} "
                     f"| {recipe.get('distill_scale')} | {escape(str(a.get('status')))} | {reasons} |")
    return "\n".join(lines)
