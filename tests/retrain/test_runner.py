"""The retrain runner and scheduler: skip on too little data (recorded), never two cycles at once."""

from __future__ import annotations

import threading

from feedback.store import FeedbackStore
from retrain.promotion import Promoter
from retrain.runner import RetrainRunner
from retrain.scheduler import start_scheduler
from settings import load_settings


def make_runner(tmp_path, **overrides):
    settings = load_settings(None, data_dir=tmp_path / "data", demo=True, **overrides)
    store = FeedbackStore(settings.db_path)
    runner = RetrainRunner(store, settings, Promoter(store, None, settings))
    return settings, store, runner


def test_scheduled_run_with_too_little_data_is_skipped_and_recorded(tmp_path):
    _, store, runner = make_runner(tmp_path, retrain_min_examples=5)
    try:
        runner.scheduled()
        run = store.list_runs()[0]
        assert run["status"] == "skipped" and run["trigger"] == "schedule"
        assert "fewer than 5" in run["error"]
    finally:
        store.close()


def test_never_two_cycles_at_once(tmp_path, monkeypatch):
    import retrain.cycle

    started, release = threading.Event(), threading.Event()

    def slow_build(*args, **kwargs):  # hold the first cycle inside its pipeline
        started.set()
        release.wait(30)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(retrain.cycle, "build_training_set", slow_build)
    _, store, runner = make_runner(tmp_path)
    try:
        first = runner.trigger(actor="a", trigger="manual")
        assert first["status"] == "started"
        assert started.wait(30)
        second = runner.trigger(actor="b", trigger="manual")
        assert second["status"] == "already_running" and second["run"]["id"] == first["run"]["id"]
        release.set()
        runner.shutdown()
        assert store.get_run(first["run"]["id"])["status"] == "failed"  # a crash in a step fails the run
        assert len(store.list_runs()) == 1
        third = runner.trigger(actor="c", trigger="manual", wait=True)  # the lock was given back
        assert third["status"] == "finished"
    finally:
        release.set()
        store.close()


def test_scheduler_jobs_coalesce_and_never_overlap(tmp_path):
    settings, store, runner = make_runner(tmp_path, retrain_cron="15 2 * * *")
    scheduler = start_scheduler(settings, runner, runner.promoter)
    try:
        job = scheduler.get_job("retrain")
        assert job.max_instances == 1 and job.coalesce is True
        assert (job.next_run_time.hour, job.next_run_time.minute) == (2, 15)
        assert scheduler.get_job("canary").max_instances == 1
    finally:
        scheduler.shutdown(wait=False)
        store.close()
