"""How admin pages show data: readable column titles, HTML tables with empty states, percentages with
interval bars, status badges, and raw JSON only inside a details fold.

Tables are rendered as escaped HTML rather than ``gr.Dataframe``: an empty Dataframe shows placeholder
headers (``1 2 3``), and a table that says what will appear and how is what an admin needs instead.
Every value passes through ``html.escape``: user text (answers, comments) is shown, never run.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

# Column titles for the store's field names; anything else gets its words capitalized.
TITLES = {
    "created_at": "When", "started_at": "Started", "finished_at": "Finished", "started_by": "Started by",
    "ended_at": "Ended", "ended_by": "Ended by", "at": "When", "user": "User", "adapter": "Adapter",
    "prompt": "Question", "answer": "Answer", "rating": "Rating", "reason": "Reason", "comment": "Comment",
    "correction": "Correction (what the user wanted)", "implicit": "From a regenerate",
    "up": "👍", "down": "👎", "corrections": "Corrections", "messages": "Messages", "rated": "Rated",
    "up_rate": "Thumbs-up rate", "action": "Action", "from_adapter": "From", "to_adapter": "To",
    "actor": "By", "control": "Production (control)", "candidate": "Candidate", "percent": "Traffic %",
    "outcome": "Outcome", "numbers": "Numbers", "assistant_messages": "Answers",
    "rated_messages": "Rated answers", "parent": "Trained from", "judgements": "Thumbs given",
    "arena_rating": "Arena rating", "votes": "Arena votes", "gate": "Gate", "status": "Status",
    "from": "From", "to": "To",
}

REASON_LABELS = {"wrong": "Wrong", "unhelpful": "Unhelpful", "unsafe": "Unsafe", "too_long": "Too long",
                 "other": "Other"}

STATUS_COLORS = {
    "production": "green", "succeeded": "green", "candidate": "blue", "running": "blue", "queued": "grey",
    "rejected": "red", "failed": "red", "retired": "grey", "archived": "grey", "skipped": "grey",
}


def title(column: str) -> str:
    return TITLES.get(column, column.replace("_", " ").strip().capitalize())


def when(dt: datetime | str | None) -> str:
    """A timestamp as an admin reads it: minutes, UTC."""
    if dt is None:
        return ""
    if isinstance(dt, str):
        try:
            dt = datetime.fromisoformat(dt)
        except ValueError:
            return dt
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def text(value: Any) -> str:
    """Any cell value as plain text (dicts and lists as compact JSON, times in minutes)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def pct(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x * 100:.{digits}f}%"


def badge(status: str | None) -> str:
    status = status or "unknown"
    color = STATUS_COLORS.get(status, "grey")
    return f'<span class="tl-badge tl-{color}">{html.escape(status)}</span>'


def empty(message: str) -> str:
    """What an admin sees instead of an empty table: what will appear here and how to get it."""
    return f'<div class="tl-empty">{html.escape(message)}</div>'


def table(rows: Iterable[dict], columns: list[str], empty_message: str, *, html_columns: Iterable[str] = (),
          elem_class: str = "") -> str:
    """An HTML table with readable titles; ``html_columns`` hold markup this module built (badges, bars)."""
    rows = list(rows)
    if not rows:
        return empty(empty_message)
    trusted = set(html_columns)
    head = "".join(f"<th>{html.escape(title(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"<td>{v if c in trusted and v is not None else html.escape(text(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="tl-table-wrap"><table class="tl-table {elem_class}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def interval_bar(rate: float | None, lo: float | None, hi: float | None, *, scale: tuple[float, float] = (0, 1),
                 label: str | None = None) -> str:
    """A rate (or rating) with its 95% interval drawn as a bar on a fixed scale."""
    if rate is None:
        return '<span class="tl-muted">no data yet</span>'
    low, high = scale
    span = (high - low) or 1.0

    def at(x: float) -> float:
        return max(0.0, min(100.0, (x - low) / span * 100))

    lo_, hi_ = (rate if lo is None else lo), (rate if hi is None else hi)
    shown = label if label is not None else pct(rate)
    interval = "" if lo is None or hi is None else f" ({pct(lo) if scale == (0, 1) else f'{lo:.0f}'}–" \
        f"{pct(hi) if scale == (0, 1) else f'{hi:.0f}'})"
    return (f'<div class="tl-bar" title="95% interval{html.escape(interval)}">'
            f'<div class="tl-bar-ci" style="left:{at(lo_):.1f}%;width:{max(at(hi_) - at(lo_), 0.5):.1f}%"></div>'
            f'<div class="tl-bar-dot" style="left:{at(rate):.1f}%"></div></div>'
            f'<span class="tl-bar-label">{html.escape(shown)}<span class="tl-muted">{html.escape(interval)}</span></span>')


def details(summary: str, data: Any) -> str:
    """Raw JSON for whoever wants it, folded away by default."""
    body = html.escape(json.dumps(data, indent=2, default=str))
    return f'<details class="tl-details"><summary>{html.escape(summary)}</summary><pre>{body}</pre></details>'
