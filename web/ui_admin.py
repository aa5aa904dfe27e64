"""The admin tabs: Data (ratings, export and the review queue: web/ui_review.py), Training (runs, loss curves, Retrain now), Adapters
(leaderboard, plots, promote / rollback / experiments / archive). Every handler checks the role."""

from __future__ import annotations

import json
from datetime import date, datetime

import gradio as gr
import pandas as pd

from web import format as fmt
from web.context import AppContext
from web.errors import user_message
from web.run_details import attempts_markdown
from web.ui_canary import build_canary_panel, canary_panel
from web.ui_common import require_admin
from web.ui_lineage import build_lineage
from web.ui_review import build_review_panel
from web.ui_runs import run_cards, what_changed

EXPERIMENT_COLUMNS = ["id", "control", "candidate", "percent", "started_at", "started_by", "ended_at", "outcome",
                      "reason", "numbers"]
RUN_COLUMNS = ["id", "status", "stage", "step", "total_steps", "loss", "eta_s", "trigger", "actor", "adapter",
               "parent_adapter", "snapshot_id", "started_at", "finished_at", "error"]


def _frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if columns is not None:
        for c in columns:
            if c not in df:
                df[c] = None
        df = df[columns]
    return df.map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v) if len(df) else df


def _guard(ctx, request, fn):
    require_admin(ctx, request)
    try:
        return fn()
    except gr.Error:
        raise
    except Exception as exc:
        raise gr.Error(user_message(exc)) from None


# --- Data ------------------------------------------------------------------------------------------
DATA_PAGE_ROWS = 200  # rated answers per page of the Data tab's table (paged in SQL)

def build_data_tab(ctx: AppContext):
    totals = gr.Markdown("", elem_id="data-totals")
    per_day_plot = gr.BarPlot(x="day", y="count", color="kind", label="Ratings per day", elem_id="ratings-per-day",
                              x_title="Day", y_title="Ratings")
    per_adapter = gr.HTML(elem_id="uprate-table")
    with gr.Row():
        f_adapter = gr.Textbox(label="Adapter")
        f_rating = gr.Dropdown(["any", "up", "down"], value="any", label="Rating")
        f_user = gr.Textbox(label="User")
        f_since = gr.Textbox(label="Since (YYYY-MM-DD)")
        f_corr = gr.Dropdown(["any", "yes", "no"], value="any", label="Has correction")
        f_page = gr.Number(1, label=f"Page ({DATA_PAGE_ROWS} rows, newest first)", minimum=1, precision=0,
                           elem_id="data-page")
    refresh = gr.Button("Refresh", elem_id="data-refresh")
    table = gr.HTML(elem_id="rated-table")

    def load(adapter, rating, user, since, corr, page, request: gr.Request):
        def work():
            stats = ctx.store.stats(max_age_s=ctx.settings.stats_cache_ttl_s)
            days = [{"day": d["day"], "kind": k, "count": d[k]} for d in stats["per_day"] for k in ("up", "down", "corrections")]
            adapters = [{**a, "up_rate": fmt.pct(a["up"] / (a["up"] + a["down"])) if a["up"] + a["down"] else None}
                        for a in stats["per_adapter"]]
            rows = ctx.store.rated_conversations(
                adapter=adapter or None, rating=None if rating == "any" else rating, user=user or None,
                since=datetime.combine(date.fromisoformat(since), datetime.min.time()) if since else None,
                has_correction=None if corr == "any" else corr == "yes", limit=DATA_PAGE_ROWS,
                offset=(_page_number(page) - 1) * DATA_PAGE_ROWS)
            for r in rows:  # ids stay out of the table: an admin reads questions and answers, not uuids
                r["rating"] = {"up": "👍", "down": "👎"}.get(r["rating"], r["rating"])
                r["reason"] = fmt.REASON_LABELS.get(r["reason"], r["reason"])
            return (_totals_sentence(stats["totals"]), pd.DataFrame(days, columns=["day", "kind", "count"]),
                    fmt.table(adapters, ["adapter", "messages", "rated", "up", "down", "corrections", "up_rate"],
                              "No answers yet: once people chat, each adapter's thumbs appear here."),
                    fmt.table(rows, ["created_at", "user", "adapter", "prompt", "answer", "origin", "rating", "reason",
                                     "comment", "correction"],
                              "No rated answers match. Ratings appear here when users press 👍 or 👎 under an "
                              "answer, or edit an answer to correct it.", elem_class="tl-rated"))
        return _guard(ctx, request, work)

    inputs = [f_adapter, f_rating, f_user, f_since, f_corr, f_page]
    refresh.click(load, inputs, [totals, per_day_plot, per_adapter, table])
    review_load, review_inputs, review_outputs = build_review_panel(ctx)
    refresh.click(review_load, review_inputs, review_outputs)
    return load, inputs, [totals, per_day_plot, per_adapter, table]


def _page_number(page) -> int:
    """The page asked for, as a whole number from 1 (blank, NaN or nonsense: the first page)."""
    try:
        return max(1, min(int(page), 10**9))
    except (TypeError, ValueError, OverflowError):
        return 1


def _totals_sentence(t: dict) -> str:
    return (f"**{t['assistant_messages']}** answers in **{t['messages']}** messages; **{t['rated_messages']}** "
            f"answers rated: **{t['up']}** 👍, **{t['down']}** 👎 and **{t['corrections']}** corrections.")


# --- Training --------------------------------------------------------------------------------------
def _run_label(r: dict) -> str:
    return f"Run {r['id'][:8]} · {r['status']} · {fmt.when(r.get('started_at') or r.get('created_at'))}"


def build_training_tab(ctx: AppContext):
    with gr.Row():
        promote_mode = gr.Dropdown([("As set in settings", "settings"), ("Promote at once if it passes", "auto"),
                                    ("Canary: a share of traffic first", "ab"), ("Wait for an admin", "manual")],
                                   value="settings", label="After the gate")
        retrain = gr.Button("Retrain now", variant="primary", elem_id="retrain-now")
    status = gr.Markdown("", elem_id="retrain-status")
    runs = gr.HTML(elem_id="runs-table")
    run_id = gr.Dropdown(label="Run", choices=[], elem_id="run-pick")
    loss_plot = gr.LinePlot(x="step", y="value", color="series", label="Loss of the chosen run", elem_id="loss-curve",
                            x_title="Training step", y_title="Loss")
    gr.Markdown("#### What changed: the new adapter and production answer the same held-out questions")
    changed = gr.HTML(elem_id="what-changed")
    gr.Markdown("#### Attempts: a run the gate rejects retries with a gentler recipe")
    attempts = gr.Markdown("", elem_id="run-attempts")
    timer = gr.Timer(2.0)

    def start(mode, request: gr.Request):
        def work():
            p = require_admin(ctx, request)
            result = ctx.retrain.trigger(actor=p.name, trigger="manual", promote=None if mode == "settings" else mode)
            run = result["run"] or {}
            if result["status"] == "already_running":
                return f"A run is already in progress: `{run.get('id')}`"
            return f"Run `{run.get('id')}` started."
        return _guard(ctx, request, work)

    def load(selected, request: gr.Request):
        def work():
            all_runs = ctx.store.list_runs()
            choices = [(_run_label(r), r["id"]) for r in all_runs]
            ids = [r["id"] for r in all_runs]
            # Default: the newest run that got as far as the gate (it has a verdict and answers to show).
            gated = [r["id"] for r in all_runs if r.get("gate")]
            chosen = selected if selected in ids else (gated or ids or [None])[0]
            points = []
            run = None
            if chosen:
                for m in ctx.store.run_metrics(chosen):
                    for series in ("loss", "eval_loss"):
                        if m.get(series) is not None:
                            points.append({"step": m["step"], "value": m[series],
                                           "series": "training loss" if series == "loss" else "held-out loss"})
                run = ctx.store.get_run(chosen)
            return (run_cards(all_runs), gr.update(choices=choices, value=chosen),
                    gr.LinePlot(value=pd.DataFrame(points, columns=["step", "value", "series"]),
                                visible=bool(points)),  # a run that never trained has no curve to draw
                    what_changed(run), attempts_markdown(run))
        return _guard(ctx, request, work)

    outputs = [runs, run_id, loss_plot, changed, attempts]
    retrain.click(start, [promote_mode], [status]).then(load, [run_id], outputs)
    timer.tick(load, [run_id], outputs, show_progress="hidden")
    run_id.input(load, [run_id], outputs)
    return load, [run_id], outputs


# --- Adapters --------------------------------------------------------------------------------------
def _leaderboard_rows(board: dict) -> list[dict]:
    rows = []
    scale = _rating_scale(board)
    for a in board["adapters"]:
        thumbs, arena = a.get("thumbs") or {}, a.get("arena") or {}
        rows.append({
            "adapter": a["name"], "status": fmt.badge(a["status"]), "parent": a["parent"],
            "up_rate": fmt.interval_bar(thumbs.get("rate"), thumbs.get("lo"), thumbs.get("hi")),
            "judgements": thumbs.get("n"),
            "arena_rating": fmt.interval_bar(arena.get("rating"), arena.get("lo"), arena.get("hi"), scale=scale,
                                             label=None if arena.get("rating") is None else f"{arena['rating']:.0f}"),
            "votes": arena.get("n_votes"),
            "gate": fmt.details("gate numbers", a["gate_metrics"]) if a.get("gate_metrics") else None,
        })
    return rows


def _rating_scale(board: dict) -> tuple[float, float]:
    """One scale for every arena bar, so their lengths compare."""
    values = [v for a in board["adapters"] for v in ((a.get("arena") or {}).get("lo"), (a.get("arena") or {}).get("hi"))
              if v is not None]
    return (min(values) - 10, max(values) + 10) if values else (0, 1)


LEADERBOARD_COLUMNS = ["adapter", "status", "parent", "up_rate", "judgements", "arena_rating", "votes", "gate"]


def build_adapters_tab(ctx: AppContext):
    production = gr.Markdown("", elem_id="production-pointer")
    board = gr.HTML(elem_id="leaderboard")
    with gr.Row():
        # Scatter, not line: a line needs two days before anything shows.
        up_plot = gr.ScatterPlot(x="day", y="up_rate", color="adapter", label="Thumbs-up rate per day",
                                 elem_id="uprate-plot", x_title="Day", y_title="Thumbs-up rate")
        win_plot = gr.ScatterPlot(x="day", y="win_rate", color="adapter", label="Arena win rate per day",
                                  elem_id="winrate-plot", x_title="Day", y_title="Win rate")
        votes_plot = gr.BarPlot(x="day", y="votes", label="Arena votes per day", elem_id="votes-plot",
                                x_title="Day", y_title="Votes")
    gr.Markdown("#### Lineage: each adapter under the one it was trained from")
    lineage_load, lineage_out = build_lineage(ctx)
    with gr.Accordion("Promote, roll back, canary, archive", open=False):
        with gr.Row():
            name = gr.Dropdown(label="Adapter", choices=[], allow_custom_value=True, elem_id="adapter-action-name")
            reason = gr.Textbox(label="Reason")
            percent = gr.Number(value=ctx.settings.canary_percent, label="Canary %", minimum=0, maximum=100)
        with gr.Row():
            promote = gr.Button("Promote", elem_id="promote")
            rollback = gr.Button("Rollback", elem_id="rollback")
            start_exp = gr.Button("Start experiment", elem_id="start-experiment")
            stop_exp = gr.Button("Stop experiment", elem_id="stop-experiment")
            archive = gr.Button("Archive", elem_id="archive")
            make_public = gr.Button("Open to users", elem_id="make-public")  # users may then chat with it by name
            make_private = gr.Button("Admins only", elem_id="make-private")
    result = gr.Markdown("", elem_id="adapter-action-result")
    gr.Markdown("#### Switches of production (who and why)")
    events = gr.HTML(elem_id="adapter-events")
    canary = build_canary_panel(ctx)
    gr.Markdown("#### Experiments (canary traffic splits)")
    experiments = gr.HTML(elem_id="experiments")

    def load(request: gr.Request):
        def work():
            lb = ctx.promoter.leaderboard()
            daily = pd.DataFrame(ctx.store.adapter_daily_stats())
            if len(daily):
                judged = (daily.get("up", 0) + daily.get("down", 0)).replace(0, float("nan"))
                daily["up_rate"] = daily.get("up", 0) / judged
                games = (daily.get("wins", 0) + daily.get("losses", 0)).replace(0, float("nan"))
                daily["win_rate"] = daily.get("wins", 0) / games
                votes = daily.groupby("day", as_index=False).agg(votes=("wins", "sum"))
            else:
                daily = pd.DataFrame(columns=["day", "adapter", "up_rate", "win_rate"])
                votes = pd.DataFrame(columns=["day", "votes"])
            names = [a["name"] for a in lb["adapters"]]
            exps = [{**e.__dict__, "numbers": fmt.details("numbers", e.numbers) if e.numbers else None}
                    for e in ctx.store.list_experiments()]
            tree, pick = lineage_load(request)
            return (f"**production → `{lb['production']}`**",
                    fmt.table(_leaderboard_rows(lb), LEADERBOARD_COLUMNS,
                              "No adapters to compare yet.", html_columns=("status", "up_rate", "arena_rating", "gate")),
                    daily[["day", "adapter", "up_rate"]].dropna(), daily[["day", "adapter", "win_rate"]].dropna(),
                    votes, gr.update(choices=names),
                    fmt.table(ctx.store.adapter_events(), ["at", "action", "from", "to", "actor", "reason"],
                              "Production has not been switched yet. Promotions and rollbacks appear here with "
                              "who made them and why."),
                    fmt.table(exps, ["started_at", "control", "candidate", "percent", "started_by", "ended_at",
                                     "outcome", "reason", "numbers"],
                              "No experiments yet. With promotion set to canary (ab), a new adapter first gets a "
                              "share of traffic here; or start one above.", html_columns=("numbers",)),
                    tree, pick, *canary_panel(ctx))
        return _guard(ctx, request, work)

    outputs = [production, board, up_plot, win_plot, votes_plot, name, events, experiments, *lineage_out, *canary]

    def act(kind):
        def handler(adapter, why, pct, request: gr.Request):
            def work():
                actor = require_admin(ctx, request).name
                why_ = why or f"{kind} from the Adapters tab"
                if kind == "promote":
                    ctx.promoter.promote(adapter, actor=actor, reason=why_)
                    return f"Production now points at `{adapter}`."
                if kind == "rollback":
                    target = ctx.promoter.rollback(to=adapter or None, actor=actor, reason=why_)
                    return f"Rolled back: production points at `{target}`."
                if kind == "start":
                    exp = ctx.promoter.start_experiment(adapter, actor=actor, percent=pct)
                    return (f"Experiment `{exp.id}` started: {exp.percent:g}% of traffic to `{adapter}`, "
                            f"ramping up while the harm guard sees no harm.")
                if kind == "stop":
                    ctx.promoter.stop_experiment(actor=actor, reason=why_)
                    return "Experiment stopped."
                if kind in ("public", "private"):
                    ctx.promoter.set_public(adapter, kind == "public", actor=actor)
                    return f"`{adapter}` is {'open to every user' if kind == 'public' else 'for admins only'}."
                ctx.promoter.archive(adapter, actor=actor)
                return f"`{adapter}` archived."
            return _guard(ctx, request, work)
        return handler

    for button, kind in ((promote, "promote"), (rollback, "rollback"), (start_exp, "start"), (stop_exp, "stop"),
                         (archive, "archive"), (make_public, "public"), (make_private, "private")):
        button.click(act(kind), [name, reason, percent], [result]).then(load, None, outputs)
    return load, [], outputs
