"""One retrain cycle: select → clean → snapshot → train (child process) → evaluate → gate → publish → promote.

A candidate the gate rejects on forgetting or held-out loss is trained again from the same snapshot with
a gentler recipe (``attempt_recipe``: lower learning rates, fewer epochs, more self-distillation anchors),
up to ``retrain_max_attempts`` and ``retrain_time_budget_s``; every attempt is recorded on the run.

Each step is a function of its own module; this file only runs them in order and records the run.
Nothing here touches what is being served until the gate has passed and the adapter is complete.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from feedback.models import AdapterRecord
from feedback.store import FeedbackStore
from retrain.artifacts import publish_adapter
from retrain.canary_facts import flag_rated
from retrain.dataset import build_training_set
from retrain.gate import gate
from retrain.row_states import settle_rows_logged
from retrain.training import TrainingFailed, TrainSpec, run_training
from serving.chat_format import escape_control_tokens
from serving.errors import UnescapableControlToken
from serving.types import BASE

log = logging.getLogger(__name__)

# Settings recorded on each run (what decides the result, not paths or secrets).
_RUN_SETTINGS = (
    "model", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate", "num_epochs",
    "max_steps", "batch_size", "replay_ratio", "dedup_threshold", "heldout_fraction", "seed", "promotion",
    "gate_max_loss_ratio", "gate_min_pref_accuracy", "gate_max_ppl_rise", "min_dpo_pairs", "dpo_learning_rate",
    "dpo_beta", "distill_ratio", "gate_canary_facts", "gate_lesson_probes", "gate_max_lessons_lost",
    "retrain_max_attempts", "retrain_time_budget_s",
)


def base_model_path(settings) -> str:
    """The base the app serves: the demo model's directory in demo mode, else ``settings.model``."""
    return str(settings.demo_dir) if settings.demo else settings.model


def _token_counter(settings):
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_model_path(settings))
    except Exception as exc:  # remote engines may serve a base we cannot fetch here
        log.warning("no tokenizer for length filtering (%s); using a word-count estimate", exc)
        return None

    def count(text: str) -> int:
        # Count what training will see: the renderer escapes control-token strings into several plain tokens
        # each, so counting the raw text would let a row packed with them pass the limit and be truncated.
        try:
            text = escape_control_tokens(tokenizer, text)
        except UnescapableControlToken:
            return sys.maxsize  # the renderer would refuse this text: over any limit, so the row is dropped
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    return count


def run_cycle(
    store: FeedbackStore,
    settings,
    promoter,
    *,
    run_id: str,
    promote: str | None = None,
    force: bool = True,
    should_cancel=None,
) -> dict:
    """Run one cycle for the already created run ``run_id``; returns the run's final record."""
    promote = promote or settings.promotion
    now = datetime.now(UTC)
    store.update_run(run_id, status="running", stage="select", started_at=now)
    run_dir = Path(settings.runs_dir) / run_id
    try:
        since = store.last_cutoff()
        new = store.new_rated_count(since)
        if new < settings.retrain_min_examples and not force:
            reason = f"{new} new rated examples since the last run, fewer than {settings.retrain_min_examples}"
            store.update_run(run_id, status="skipped", error=reason, finished_at=datetime.now(UTC))
            log.info("run %s skipped: %s", run_id, reason)
            return store.get_run(run_id)

        store.update_run(run_id, stage="build training set")
        snapshot = build_training_set(store, settings, count_tokens=_token_counter(settings), now=now)
        store.update_run(run_id, snapshot_id=snapshot.id, cutoff=snapshot.cutoff)
        if snapshot.n_sft_train == 0:
            reason = "no usable training examples after cleaning"
            store.update_run(run_id, status="skipped", error=reason, finished_at=datetime.now(UTC))
            return store.get_run(run_id)

        production = store.production()
        production_path = None if production == BASE else str(Path(settings.adapters_dir) / production)
        store.update_run(run_id, stage="train", parent_adapter=production)
        curve = {"stage": None, "offset": 0, "last": 0}  # later stages count steps from 1 again: continue the curve

        def on_progress(p: dict) -> None:
            fields = {k: p[k] for k in ("step", "total_steps", "loss", "eta_s", "stage") if p.get(k) is not None}
            if fields:
                store.update_run(run_id, **fields)
            stage = p.get("stage")
            if stage is not None and stage != curve["stage"]:
                curve["stage"], curve["offset"] = stage, curve["last"]
            if p.get("step") is not None and (p.get("loss") is not None or p.get("eval_loss") is not None):
                step = int(p["step"]) + curve["offset"]
                curve["last"] = step
                store.add_run_metric(run_id, step, p.get("loss"), p.get("eval_loss"))

        attempts: list[dict] = []
        started = time.monotonic()
        for number in range(1, settings.retrain_max_attempts + 1):
            recipe = attempt_recipe(settings, number)
            spec = TrainSpec.from_settings(
                settings,
                run_id=run_id,
                base_model=base_model_path(settings),
                parent_adapter=production_path,
                production_adapter=production_path,
                snapshot_dir=str(snapshot.path),
                output_dir=str(run_dir / "adapter"),
                progress_path=str(run_dir / ("progress.jsonl" if number == 1 else f"progress-{number}.jsonl")),
                distill_cache_path=str(distill_cache_path(settings, production)),
                canary_facts_path="" if settings.gate_canary_facts else None,
                what_changed_prompts=settings.what_changed_prompts,
                **{k: v for k, v in recipe.items() if k != "attempt"},
                attempt=number,
            )
            attempt = {"attempt": number, "recipe": recipe, "status": "training",
                       "started_at": datetime.now(UTC).isoformat()}
            attempts.append(attempt)
            store.update_run(run_id, attempts=attempts)
            t0 = time.monotonic()
            try:
                outcome = run_training(spec, on_progress=on_progress, should_cancel=should_cancel)
            except TrainingFailed as exc:
                attempt.update(status="failed", error=str(exc), wall_s=round(time.monotonic() - t0, 1))
                store.update_run(run_id, attempts=attempts)
                raise
            store.update_run(run_id, stage="gate")
            result = gate(outcome.report["candidate"], outcome.report["production"], settings,
                          canary=outcome.report.get("canary_facts"), lessons=outcome.report.get("lessons"))
            if "canary_facts" in result.failed_checks:
                rated = store.rated_examples(since=snapshot.previous_cutoff, until=snapshot.cutoff)
                result.flagged_message_ids = sorted(
                    set(result.flagged_message_ids) | set(flag_rated(outcome.report["canary_facts"], rated)))
            if number <= settings.debug_reject_attempts:
                result.passed = False
                result.failed_checks.append("reference_ppl")
                result.reasons.append("reference_ppl: rejected by debug_reject_attempts (testing only) FAILED")
            attempt.update(status="passed" if result.passed else "rejected", gate=asdict(result),
                           train=outcome.report.get("train"), wall_s=round(time.monotonic() - t0, 1),
                           finished_at=datetime.now(UTC).isoformat())
            # The held-out answers of both adapters travel with the verdict (the Training tab's "what changed").
            store.update_run(run_id, gate={**asdict(result), "attempt": number,
                                           "samples": outcome.report.get("samples", [])}, attempts=attempts)
            log.info("run %s attempt %d: %s", run_id, number, attempt["status"])
            if result.passed or not _worth_retrying(result):
                break
            elapsed = time.monotonic() - started
            if elapsed + (time.monotonic() - t0) > settings.retrain_time_budget_s:
                attempt["note"] = "no further attempt: the next would end past retrain_time_budget_s"
                store.update_run(run_id, attempts=attempts)
                break
        if not result.passed:
            why = "; ".join(r for r in result.reasons if r.endswith("FAILED"))
            store.update_run(run_id, status="rejected", stage="done", finished_at=datetime.now(UTC),
                             error=f"{why} (attempt {number} of {settings.retrain_max_attempts})")
            log.info("run %s rejected by the gate after %d attempts", run_id, number)
            return store.get_run(run_id)

        store.update_run(run_id, stage="publish")
        name = store.next_adapter_version()
        path = publish_adapter(outcome.adapter_dir, settings.adapters_dir, name, {
            "parent": production, "base_model": settings.model if not settings.demo else "tuneloop-demo",
            "snapshot_id": snapshot.id, "snapshot_hash": snapshot.content_hash, "run_id": run_id,
            "gate": result.metrics, "attempt": number, "attempts": len(attempts), "recipe": recipe,
            "hyperparameters": {**{k: getattr(settings, k) for k in _RUN_SETTINGS}, **recipe},
        })
        store.register_adapter(AdapterRecord(name=name, path=str(path), parent=production, snapshot_id=snapshot.id,
                                             run_id=run_id, metrics=result.metrics, status="candidate"))
        store.update_run(run_id, stage="promote")
        promoter.ensure_loaded(name)
        if promote == "auto":
            promoter.promote(name, actor="retrain", reason=f"run {run_id} passed the gate")
        elif promote == "ab":
            promoter.start_experiment(name, actor="retrain")
        store.update_run(run_id, status="succeeded", stage="done", adapter=name, finished_at=datetime.now(UTC))
        log.info("run %s succeeded: adapter %s (%s)", run_id, name, promote)
        return store.get_run(run_id)
    except TrainingFailed as exc:
        store.update_run(run_id, status="failed", error=str(exc), finished_at=datetime.now(UTC))
        log.error("run %s failed: %s", run_id, exc)
        return store.get_run(run_id)
    except Exception as exc:
        stage = store.get_run(run_id)["stage"]  # e.g. a full disk while building the set or publishing
        store.update_run(run_id, status="failed", error=f"{stage} failed: {type(exc).__name__}: {exc}",
                         finished_at=datetime.now(UTC))
        log.exception("run %s failed at %s", run_id, stage)
        return store.get_run(run_id)
    finally:
        # The run's own copy of the adapter: published ones live in the adapters dir, others are never used.
        shutil.rmtree(run_dir / "adapter", ignore_errors=True)
        settle_rows_logged(store, settings, run_id)


# Checks a gentler recipe can fix: it moves the weights less (an earlier lesson lost is forgetting too). A
# contradicted canary fact (rows flagged) or a preference failure comes from the data, and is for a reviewer,
# not for another attempt.
_RETRYABLE = {"heldout_loss", "reference_ppl", "lessons_kept"}


def _worth_retrying(result) -> bool:
    failed = set(result.failed_checks)
    return bool(failed & _RETRYABLE) and "canary_facts" not in failed


def attempt_recipe(settings, number: int) -> dict:
    """The recipe of attempt ``number`` (1 = the settings as they are; each retry backs off once more)."""
    k = number - 1
    lr, epochs, anchors = settings.backoff_lr_factor ** k, settings.backoff_epochs_factor ** k, settings.backoff_anchor_factor ** k
    return {"attempt": number, "learning_rate": settings.learning_rate * lr,
            "preference_learning_rate": settings.preference_learning_rate * lr,
            "dpo_learning_rate": settings.dpo_learning_rate * lr,
            "num_epochs": round(max(settings.num_epochs * epochs, 1.0), 2), "distill_scale": anchors}


def distill_cache_path(settings, production: str) -> Path:
    """Where production's self-distillation anchors are cached (``retrain.distill``)."""
    from retrain.distill import cache_path

    return cache_path(Path(settings.data_dir) / "distill", production, base_model_path(settings),
                      settings.distill_max_new_tokens)


def settings_record(settings) -> dict:
    return {k: getattr(settings, k) for k in _RUN_SETTINGS}
