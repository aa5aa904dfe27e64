"""The APScheduler jobs: the nightly retrain and the canary check. Wiring only; the work is elsewhere."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

log = logging.getLogger(__name__)
CANARY_CHECK_MINUTES = 5
RESYNC_MINUTES = 1


def start_scheduler(settings, runner, promoter) -> BackgroundScheduler:
    scheduler = BackgroundScheduler()
    # max_instances=1 + coalesce: a late or overlapping firing becomes one run, never two at once
    # (the runner's lock also guards against the admin button and the CLI).
    scheduler.add_job(runner.scheduled, CronTrigger.from_crontab(settings.retrain_cron), id="retrain",
                      max_instances=1, coalesce=True, misfire_grace_time=3600)
    scheduler.add_job(promoter.check_canary, "interval", minutes=CANARY_CHECK_MINUTES, id="canary",
                      max_instances=1, coalesce=True)
    # A remote engine that was down at start, or restarted and forgot its runtime-loaded adapters,
    # gets the production adapter back.
    scheduler.add_job(promoter.resync_if_needed, "interval", minutes=RESYNC_MINUTES, id="resync",
                      max_instances=1, coalesce=True)
    scheduler.start()
    log.info("scheduler started: retrain cron %r", settings.retrain_cron)
    return scheduler
