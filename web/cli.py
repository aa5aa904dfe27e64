"""The command line of ``app.py``: global flags (before or after the subcommand) and the subcommands.

Kept out of ``app.py`` so that the entry point stays wiring; ``web/commands.py`` runs what is parsed here.
"""

from __future__ import annotations

import argparse


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
    e.add_argument("--out", required=True, help="file to write (outside the data dir)")
    e.add_argument("--force", action="store_true",
                   help="replace --out if it exists; without it a file there, even one made while exporting, stays")
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
    u.add_argument("--role", choices=["user", "admin"],
                   help="add: the user's role (default: a new user is 'user', an existing one keeps theirs)")
    u.add_argument("--password", help="password (default: asked on the terminal)")
    d = sub.add_parser("data", help="review rated answers (list, include, discard) and set users' trust",
                       parents=[common])
    d.add_argument("action", choices=["list", "include", "discard", "trust"])
    d.add_argument("ids", nargs="*", help="message ids to include or discard; for trust, one user NAME")
    d.add_argument("--state", help="list: pending_review, retrying, needs_review, discarded, approved, trusted, "
                                   "untrusted or all (default: pending_review)")
    d.add_argument("--limit", type=int, default=50)
    d.add_argument("--reason", default="")
    d.add_argument("--off", action="store_true", help="trust: take the user's trust away; their answers trusted because of "
                                                       "it and not trained yet go back to review (thumbs-downs: capped)")
    return p.parse_args(argv)
