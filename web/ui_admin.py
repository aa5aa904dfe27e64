"""The admin tabs: Data (ratings and export), Training (runs, loss curves, Retrain now), Adapters
(leaderboard, plots, promote / rollback / experiments / archive). Every handler checks the role."""

from __future__ import annotations

import json
from datetime import date, datetime

import gradio as gr
import pandas as pd

from web.context import AppContext
from web.errors import user_message
from web.run_details import attempts_markdown
from web.ui_common import require_admin

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
def build_data_tab(ctx: AppContext):
    totals = gr.JSON(label="Totals", elem_id="data-totals")
    per_day_plot = gr.BarPlot(x="day", y="count", color="kind", label="Ratings per day", elem_id="ratings-per-day")
    per_adapter = gr.Dataframe(label="Up-rate per adapter", interactive=False, elem_id="uprate-table")
    with gr.Row():
        f_adapter = gr.Textbox(label="Adapter")
        f_rating = gr.Dropdown(["any", "up", "down"], value="any", label="Rating")
        f_user = gr.Textbox(label="User")
        f_since = gr.Textbox(label="Since (YYYY-MM-DD)")
        f_corr = gr.Dropdown(["any", "yes", "no"], value="any", label="Has correction")
    refresh = gr.Button("Refresh", elem_id="data-refresh")
    table = gr.Dataframe(label="Rated answers", interactive=False, wrap=True, elem_id="rated-table")

    def load(adapter, rating, user, since, corr, request: gr.Request):
        def work():
            stats = ctx.store.stats()
            days = [{"day": d["day"], "kind": k, "count": d[k]} for d in stats["per_day"] for k in ("up", "down", "corrections")]
            adapters = [{**a, "up_rate": round(a["up"] / (a["up"] + a["down"]), 3) if a["up"] + a["down"] else None}
                        for a in stats["per_adapter"]]
            rows = ctx.store.rated_conversations(
                adapter=adapter or None, rating=None if rating == "any" else rating, user=user or None,
                since=datetime.combine(date.fromisoformat(since), datetime.min.time()) if since else None,
                has_correction=None if corr == "any" else corr == "yes")
            return stats["totals"], pd.DataFrame(days, columns=["day", "kind", "count"]), _frame(adapters), _frame(rows)
        return _guard(ctx, request, work)

    inputs = [f_adapter, f_rating, f_user, f_since, f_corr]
    refresh.click(load, inputs, [totals, per_day_plot, per_adapter, table])
    return load, inputs, [totals, per_day_plot, per_adapter, table]


# --- Training --------------------------------------------------------------------------------------
def build_training_tab(ctx: AppContext):
    with gr.Row():
        promote_mode = gr.Dropdown(["settings", "auto", "ab", "manual"], value="settings", label="After the gate")
        retrain = gr.Button("Retrain now", variant="primary", elem_id="retrain-now")
    status = gr.Markdown("", elem_id="retrain-status")
    runs = gr.Dataframe(label="Runs", interactive=False, wrap=True, elem_id="runs-table")
    run_id = gr.Dropdown(label="Run", choices=[], elem_id="run-pick")
    loss_plot = gr.LinePlot(x="step", y="value", color="series", label="Loss", elem_id="loss-curve")
    attempts = gr.Markdown("", elem_id="run-attempts")
    gate = gr.JSON(label="Gate result and data counts", elem_id="gate-result")
    lineage = gr.Dataframe(label="Adapter registry (lineage)", interactive=False, elem_id="lineage")
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
            choices = [r["id"] for r in all_runs]
            chosen = selected if selected in choices else (choices[0] if choices else None)
            points = []
            detail = {}
            run = None
            if chosen:
                for m in ctx.store.run_metrics(chosen):
                    for series in ("loss", "eval_loss"):
                        if m.get(series) is not None:
                            points.append({"step": m["step"], "value": m[series], "series": series})
                run = ctx.store.get_run(chosen) or {}
                snap = ctx.store.get_snapshot(run["snapshot_id"]) if run.get("snapshot_id") else None
                detail = {"run": chosen, "status": run.get("status"), "gate": run.get("gate"),
                          "data_counts": (snap or {}).get("counts") if isinstance(snap, dict) else getattr(snap, "counts", None)}
            records = [{"name": r.name, "parent": r.parent, "status": r.status, "snapshot_id": r.snapshot_id,
                        "run_id": r.run_id, "created_at": r.created_at} for r in ctx.store.list_adapter_records()]
            return (_frame(all_runs, RUN_COLUMNS), gr.update(choices=choices, value=chosen),
                    pd.DataFrame(points, columns=["step", "value", "series"]), attempts_markdown(run), detail,
                    _frame(records))
        return _guard(ctx, request, work)

    outputs = [runs, run_id, loss_plot, attempts, gate, lineage]
    retrain.click(start, [promote_mode], [status]).then(load, [run_id], outputs)
    timer.tick(load, [run_id], outputs, show_progress="hidden")
    run_id.input(load, [run_id], outputs)
    return load, [run_id], outputs


# --- Adapters --------------------------------------------------------------------------------------
def _leaderboard_rows(board: dict) -> list[dict]:
    rows = []
    for a in board["adapters"]:
        thumbs, arena = a.get("thumbs") or {}, a.get("arena") or {}
        rows.append({
            "adapter": a["name"], "status": a["status"], "parent": a["parent"],
            "up_rate": _round(thumbs.get("rate"), 3), "up_rate_95ci": _ci(thumbs), "judgements": thumbs.get("n"),
            "arena_rating": _round(arena.get("rating"), 0), "arena_95ci": _ci(arena), "votes": arena.get("n_votes"),
            "gate": json.dumps(a.get("gate_metrics") or {}),
        })
    return rows


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _ci(d: dict) -> str | None:
    lo, hi = d.get("lo"), d.get("hi")
    return None if lo is None or hi is None else f"[{lo:.3g}, {hi:.3g}]"


def build_adapters_tab(ctx: AppContext):
    production = gr.Markdown("", elem_id="production-pointer")
    board = gr.Dataframe(label="Leaderboard", interactive=False, wrap=True, elem_id="leaderboard")
    with gr.Row():
        # Scatter, not line: a line needs two days before anything shows.
        up_plot = gr.ScatterPlot(x="day", y="up_rate", color="adapter", label="Up-rate per day", elem_id="uprate-plot")
        win_plot = gr.ScatterPlot(x="day", y="win_rate", color="adapter", label="Arena win rate per day",
                                  elem_id="winrate-plot")
        votes_plot = gr.BarPlot(x="day", y="votes", label="Arena votes per day", elem_id="votes-plot")
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
    result = gr.Markdown("", elem_id="adapter-action-result")
    events = gr.Dataframe(label="Switches (who and why)", interactive=False, wrap=True, elem_id="adapter-events")
    experiments = gr.Dataframe(label="Experiments", interactive=False, wrap=True, elem_id="experiments")

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
            return (f"**production → `{lb['production']}`**", _frame(_leaderboard_rows(lb)),
                    daily[["day", "adapter", "up_rate"]].dropna(), daily[["day", "adapter", "win_rate"]].dropna(),
                    votes, gr.update(choices=names), _frame(ctx.store.adapter_events()),
                    _frame([e.__dict__ for e in ctx.store.list_experiments()], EXPERIMENT_COLUMNS))
        return _guard(ctx, request, work)

    outputs = [production, board, up_plot, win_plot, votes_plot, name, events, experiments]

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
                    return f"Experiment `{exp.id}` started: {exp.percent:.0f}% of traffic to `{adapter}`."
                if kind == "stop":
                    ctx.promoter.stop_experiment(actor=actor, reason=why_)
                    return "Experiment stopped."
                ctx.promoter.archive(adapter, actor=actor)
                return f"`{adapter}` archived."
            return _guard(ctx, request, work)
        return handler

    for button, kind in ((promote, "promote"), (rollback, "rollback"), (start_exp, "start"), (stop_exp, "stop"),
                         (archive, "archive")):
        button.click(act(kind), [name, reason, percent], [result]).then(load, None, outputs)
    return load, [], outputs
