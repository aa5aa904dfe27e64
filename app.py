"""Tuneloop's entry point: settings → store → backend → scheduler → UI + API → launch. Wiring only.

    python app.py [--demo] [--model ID_OR_PATH] [--config FILE] [--data-dir DIR] [--host H] [--port P]
    python app.py export --out FILE --format openai|parquet [--since DATE] [--rated-only] [--force]
    python app.py retrain [--promote auto|ab|manual] [--json]
    python app.py adapters list | rollback [--to NAME] [--reason TEXT] | promote NAME
    python app.py users add NAME [--role admin|user] [--password P] | token NAME | list
    python app.py train-node --machine-rank N   (another machine of a multi-machine training set-up)
    python app.py data list [--state S] | include ID... | discard ID... [--reason TEXT] | trust [NAME [--off]]

export never writes inside the data dir, and replaces an existing FILE only with --force. users add on an
existing user sets a new password and keeps their role unless --role is given (a new user is a "user").
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

from settings import Settings, load_settings
from web.cli import parse_args

log = logging.getLogger("tuneloop")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, demo=args.demo, model=args.model, data_dir=args.data_dir, host=args.host,
                         port=args.port, quantization=args.quantization, backend=args.backend,
                         remote_url=args.remote_url)


def build_context(settings: Settings):
    """Create the long-lived services the API and UI share."""
    from feedback.store import FeedbackStore
    from retrain.promotion import Promoter
    from retrain.runner import RetrainRunner
    from serving.factory import create_backend
    from web.arena import ArenaService
    from web.auth import users_directory
    from web.chat import ChatService, RequestLimits
    from web.context import AppContext
    from web.metrics import Metrics

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = FeedbackStore(settings.db_path)
    store.mark_stale_runs_failed("the app stopped while the run was in progress")
    backend = create_backend(settings)
    metrics = Metrics()
    promoter = Promoter(store, backend, settings)
    promoter.sync()
    runner = RetrainRunner(store, settings, promoter,
                           on_finished=lambda run: metrics.training_runs.labels(run["status"]).inc())
    limits = RequestLimits(settings.max_messages, settings.max_request_chars)
    return AppContext(
        settings=settings, store=store, backend=backend, users=users_directory(settings),
        chat=ChatService(backend, store, on_turn=metrics.observe_turn, limits=limits),
        arena=ArenaService(backend, store, settings.system_prompt, limits, settings.arena_battles_per_user),
        promoter=promoter, retrain=runner,
        metrics=metrics, control_token=secrets.token_urlsafe(32),
    )


def _exit_on_sigterm(signum, frame):
    # uvicorn re-raises the SIGTERM it caught after its graceful shutdown; with the default handler the
    # process would die there, skipping the clean-up below (running-app.json stayed behind).
    raise SystemExit(0)


def serve(settings: Settings) -> int:
    import signal

    import uvicorn

    from retrain.scheduler import start_scheduler
    from web.auth import users_directory
    from web.control import running_app_file
    from web.private import make_private
    from web.server import create_app, refuse_open_bind

    make_private(settings.data_dir)
    refuse_open_bind(settings, users_directory(settings))
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    ctx = build_context(settings)
    scheduler = start_scheduler(settings, ctx.retrain, ctx.promoter)
    app = create_app(ctx)
    try:
        with running_app_file(settings, ctx.control_token):
            uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    finally:
        scheduler.shutdown(wait=False)
        ctx.retrain.shutdown()
        ctx.backend.close()
        ctx.store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(args)
    except Exception as exc:
        print(f"error: bad settings: {exc}", file=sys.stderr)
        return 2
    from web.logs import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    os.umask(0o077)  # every file this process (and its training child) makes is private; see web/private.py
    from web import commands
    from web.errors import classify, user_message

    try:
        if args.command in (None, "serve"):
            return serve(settings)
        return commands.run(args, settings)
    except commands.CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the user sees a sentence, the log keeps the trace
        if args.command in (None, "serve"):
            print(f"error: {user_message(exc)}", file=sys.stderr)
            return 1
        status, code, message = classify(exc)
        if code == "internal_error":  # no server log to point at: the trace goes to stderr, above the sentence
            log.error("%s failed", args.command, exc_info=exc)
            message = f"{args.command} failed ({type(exc).__name__}); the trace is above"
        print(f"error: {message}", file=sys.stderr)
        return 2 if status < 500 else 1  # 2: a mistake in what was asked (an unknown user, a bad name)


if __name__ == "__main__":
    sys.exit(main())
