"""Tuneloop's entry point: settings → store → backend → scheduler → UI + API → launch. Wiring only.

    python app.py [--demo] [--model ID_OR_PATH] [--config FILE] [--data-dir DIR] [--host H] [--port P]
    python app.py export --out FILE --format openai|parquet [--since DATE] [--rated-only]
    python app.py retrain [--promote auto|ab|manual] [--json]
    python app.py adapters list | rollback [--to NAME] [--reason TEXT] | promote NAME
    python app.py users add NAME [--role admin|user] | token NAME
    python app.py train-node --machine-rank N   (another machine of a multi-machine training set-up)
    python app.py data list [--state S] | include ID... | discard ID... [--reason TEXT] | trust [NAME [--off]]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

from settings import Settings, load_settings

log = logging.getLogger("tuneloop")


def _global_flags(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--config", default=default, help="TOML settings file (environment TUNELOOP_* and flags override it)")
    p.add_argument("--demo", action="store_true", default=default, help="serve a tiny offline demo model (its words are noise)")
    p.add_argument("--model", default=default, help="base model: hub id or local path (default Qwen/Qwen2.5-0.5B-Instruct)")
    p.add_argument("--data-dir", default=default, help="directory for the DuckDB file, adapters and training sets (default ./data)")
    p.add_argument("--host", default=default, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default, help="port to bind (default 7860)")
    p.add_argument("--quantization", default=default, choices=["auto", "4bit", "8bit", "none"], help="auto = 4-bit NF4 on CUDA, none on CPU")
    p.add_argument("--backend", default=default, choices=["local", "remote"], help="generate in-process or on a remote OpenAI-compatible engine")
    p.add_argument("--remote-url", default=default, help="the remote engine's OpenAI-compatible base URL, e.g. http://host:8000/v1")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="app.py", description="Tuneloop: a chat app that fine-tunes itself from its users' ratings.")
    _global_flags(p, None)
    # Every subcommand takes the global flags too (``app.py export --data-dir D``); SUPPRESS keeps a flag
    # given before the subcommand from being reset to None by the subparser's own default.
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the app (the default)", parents=[common])
    e = sub.add_parser("export", help="export conversations with their ratings", parents=[common])
    e.add_argument("--out", required=True)
    e.add_argument("--format", choices=["openai", "parquet"], default="openai")
    e.add_argument("--since", help="only conversations from this date (YYYY-MM-DD)")
    e.add_argument("--rated-only", action="store_true")
    r = sub.add_parser("retrain", help="run one retrain cycle now (handed to the running app if there is one)", parents=[common])
    r.add_argument("--promote", choices=["auto", "ab", "manual"])
    r.add_argument("--json", action="store_true", help="print the run as JSON")
    a = sub.add_parser("adapters", help="list, promote or roll back adapters", parents=[common])
    a.add_argument("action", choices=["list", "rollback", "promote"])
    a.add_argument("name", nargs="?")
    a.add_argument("--to", help="rollback target (default: the previous production)")
    a.add_argument("--reason", default="")
    t = sub.add_parser("train-node", help="on another training machine: take part in each multi-machine training run",
                       parents=[common])
    t.add_argument("--machine-rank", type=int, required=True, help="this machine's rank (1 and up; 0 is the app's)")
    u = sub.add_parser("users", help="add users and API tokens", parents=[common])
    u.add_argument("action", choices=["add", "token", "list"])
    u.add_argument("name", nargs="?")
    u.add_argument("--role", choices=["user", "admin"], default="user")
    u.add_argument("--password", help="password (default: asked on the terminal)")
    d = sub.add_parser("data", help="review rated answers (list, include, discard) and set users' trust",
                       parents=[common])
    d.add_argument("action", choices=["list", "include", "discard", "trust"])
    d.add_argument("ids", nargs="*", help="message ids to include or discard; for trust, one user NAME")
    d.add_argument("--state", help="list: pending_review, retrying, needs_review, discarded, approved, trusted, "
                                   "untrusted or all (default: pending_review)")
    d.add_argument("--limit", type=int, default=50)
    d.add_argument("--reason", default="")
    d.add_argument("--off", action="store_true", help="trust: take the user's trust away")
    return p.parse_args(argv)


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
        arena=ArenaService(backend, store, settings.system_prompt, limits), promoter=promoter, retrain=runner,
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
    from web.errors import user_message

    try:
        if args.command in (None, "serve"):
            return serve(settings)
        return commands.run(args, settings)
    except commands.CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the user sees a sentence, the log keeps the trace
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
