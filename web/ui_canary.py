"""The canary panel of the Adapters tab: the running (or last) experiment drawn as people read it.

Rendering only: the numbers come from ``retrain.canary_report.experiment_report``. The charts are small
inline SVGs (an interval is a shaded band, which Gradio's plots cannot draw) with no extra dependency.
"""

from __future__ import annotations

import math
from html import escape

import gradio as gr
import pandas as pd

from retrain.canary import CanaryPolicy
from retrain.canary_report import experiment_report, pick_experiment
from web.context import AppContext

STEP_COLUMNS = ["step", "percent", "at", "actor", "reason"]
COLORS = {"control": "#4c78a8", "candidate": "#f58518", "better": "#2ca02c", "harm": "#d62728"}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 220, 48, 150, 24, 32


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def summary_markdown(report: dict | None) -> str:
    """The panel's headline: who runs against whom, the current share, rates, evidence, and the why."""
    if report is None:
        return "No canary experiment yet."
    exp, pts, th = report["experiment"], report["points"], report["thresholds"]
    last = pts[-1] if pts else None
    state = "running" if exp["active"] else f"ended: **{exp['outcome']}**"
    lines = [f"**Canary `{escape(exp['id'])}`**: candidate `{escape(exp['candidate'])}` against production "
             f"`{escape(exp['control'])}`, {state}. Candidate share now **{exp['percent']:g}%** "
             f"(ramp {' → '.join(f'{p:g}%' for p in report['shares'])})."]
    if last:
        c, k = last["control"], last["candidate"]
        lines.append(f"Up-rate: candidate **{_pct(k['rate'])}** [{_pct(k['lo'])}, {_pct(k['hi'])}] of {k['n']}, "
                     f"production **{_pct(c['rate'])}** [{_pct(c['lo'])}, {_pct(c['hi'])}] of {c['n']}.")
        lines.append(f"Evidence for the candidate {last['e_better']:.1f} of {th['promote_at']:.0f} needed to promote "
                     f"({100 * min(1.0, last['progress_better']):.0f}% of the way); of harm {last['e_harm']:.1f} of "
                     f"{th['rollback_at']:.0f} needed to roll back ({100 * min(1.0, last['progress_harm']):.0f}%).")
    lines.append(f"> {escape(report['status'])}")
    return "\n\n".join(lines)


def steps_frame(report: dict | None) -> pd.DataFrame:
    rows = report["steps"] if report else []
    return pd.DataFrame([{k: s.get(k) for k in STEP_COLUMNS} for s in rows], columns=STEP_COLUMNS)


def _chart(title: str, x_max: float, y_lo: float, y_hi: float, ticks: list[float], body) -> str:
    """An SVG frame with axes; ``body(x, y)`` returns the marks, given the data-to-pixel maps."""
    def x(v: float) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * v / x_max

    def y(v: float) -> float:
        return PAD_T + (H - PAD_T - PAD_B) * (1 - (v - y_lo) / (y_hi - y_lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" '
             f'aria-label="{escape(title)}" style="max-width:{W}px;font:11px sans-serif">',
             f'<text x="{PAD_L}" y="14" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{PAD_L}" y1="{y(y_lo)}" x2="{W - PAD_R}" y2="{y(y_lo)}" stroke="#999"/>']
    for t in ticks:
        parts.append(f'<line x1="{PAD_L}" y1="{y(t):.1f}" x2="{W - PAD_R}" y2="{y(t):.1f}" stroke="#eee"/>'
                     f'<text x="{PAD_L - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{100 * t:.0f}%</text>')
    for i in range(5):
        h = x_max * i / 4
        parts.append(f'<text x="{x(h):.1f}" y="{H - 12}" text-anchor="middle">{h:.0f} h</text>')
    parts.extend(body(x, y))
    parts.append("</svg>")
    return "".join(parts)


def _polyline(pts: list[tuple[float, float]], color: str, dash: str = "") -> str:
    d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
    return f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2" {dash}/>'


def _legend(items: list[tuple[str, str]]) -> list[str]:
    out = []
    for i, (label, color) in enumerate(items):
        yy = PAD_T + 14 * i + 6
        out.append(f'<rect x="{W - PAD_R + 10}" y="{yy - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{W - PAD_R + 24}" y="{yy + 1}">{escape(label)}</text>')
    return out


def _step_marks(report: dict, x, y, y_top: float) -> list[str]:
    out = []
    for s in report["steps"][1:]:
        out.append(f'<line x1="{x(s["hours"]):.1f}" y1="{y(y_top):.1f}" x2="{x(s["hours"]):.1f}" y2="{H - PAD_B}" '
                   f'stroke="#888" stroke-dasharray="3,3"/><text x="{x(s["hours"]) + 2:.1f}" y="{y(y_top) + 10:.1f}" '
                   f'fill="#555">{s["percent"]:g}%</text>')
    return out


def rates_svg(report: dict | None) -> str:
    """Both arms' cumulative up-rates over time, each with its 95% interval as a band; ramp steps dashed."""
    pts = report["points"] if report else []
    if not pts:
        return "<p>No judgements in this experiment yet.</p>"
    x_max = max(1.0, pts[-1]["hours"])
    lo = min(p[a]["lo"] for p in pts for a in ("control", "candidate"))
    hi = max(p[a]["hi"] for p in pts for a in ("control", "candidate"))
    y_lo, y_hi = math.floor(10 * lo) / 10, math.ceil(10 * hi) / 10  # whole tens of percent
    if y_hi - y_lo < 0.2:
        y_lo, y_hi = max(0.0, y_lo - 0.1), min(1.0, y_hi + 0.1)
    ticks = [i / 10 for i in range(round(10 * y_lo), round(10 * y_hi) + 1)]

    def body(x, y):
        out = []
        for arm in ("control", "candidate"):
            top = [(x(p["hours"]), y(p[arm]["hi"])) for p in pts]
            bottom = [(x(p["hours"]), y(p[arm]["lo"])) for p in reversed(pts)]
            poly = " ".join(f"{a:.1f},{b:.1f}" for a, b in top + bottom)
            out.append(f'<polygon points="{poly}" fill="{COLORS[arm]}" fill-opacity="0.18" stroke="none"/>')
            line = [(x(p["hours"]), y(p[arm]["rate"])) for p in pts if p[arm]["rate"] is not None]
            out.append(_polyline(line, COLORS[arm]))
        out.extend(_step_marks(report, x, y, y_hi))
        out.extend(_legend([("production (95% band)", COLORS["control"]), ("candidate (95% band)", COLORS["candidate"])]))
        return out

    return _chart("Up-rate by arm", x_max, y_lo, y_hi, ticks, body)


def evidence_svg(report: dict | None) -> str:
    """Evidence for the candidate and of harm, as the share of the way to its threshold (100% = decide)."""
    pts = report["points"] if report else []
    if not pts:
        return ""
    x_max = max(1.0, pts[-1]["hours"])
    th = report["thresholds"]
    y_hi = max(1.1, min(2.0, max(max(p["progress_better"], p["progress_harm"]) for p in pts) + 0.1))

    def body(x, y):
        out = [f'<line x1="{PAD_L}" y1="{y(1.0):.1f}" x2="{W - PAD_R}" y2="{y(1.0):.1f}" stroke="#333" '
               f'stroke-dasharray="6,3"/><text x="{W - PAD_R - 2}" y="{y(1.0) - 3:.1f}" text-anchor="end">'
               f'threshold: decide</text>']
        for key, color in (("progress_better", COLORS["better"]), ("progress_harm", COLORS["harm"])):
            out.append(_polyline([(x(p["hours"]), y(min(p[key], y_hi))) for p in pts], color))
        out.extend(_step_marks(report, x, y, y_hi))
        out.extend(_legend([(f"for candidate (need {th['promote_at']:.0f})", COLORS["better"]),
                            (f"of harm (need {th['rollback_at']:.0f})", COLORS["harm"])]))
        return out

    ticks = [i / 4 for i in range(int(4 * y_hi) + 1)]
    return _chart("Evidence so far (share of the way to a decision, log scale)", x_max, 0.0, y_hi, ticks, body)


def canary_panel(ctx: AppContext) -> tuple:
    """The values for ``build_canary_panel``'s components, in order."""
    exp = pick_experiment(ctx.store)
    report = experiment_report(ctx.store, CanaryPolicy.from_settings(ctx.settings), exp) if exp else None
    return summary_markdown(report), rates_svg(report) + evidence_svg(report), steps_frame(report)


def build_canary_panel(ctx: AppContext) -> list:
    """Place the panel's components; returns them, to be filled with ``canary_panel(ctx)``."""
    with gr.Group():
        summary = gr.Markdown("", elem_id="canary-summary")
        charts = gr.HTML("", elem_id="canary-charts")
        steps = gr.Dataframe(label="Ramp steps", interactive=False, wrap=True, elem_id="canary-steps")
    return [summary, charts, steps]
