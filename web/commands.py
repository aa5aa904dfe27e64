"""The command-line subcommands of ``python app.py``: export, retrain, adapters, users, data.

Commands that write to the store go through the running app when there is one (it owns the DuckDB
file) and open the file themselves otherwise.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import sys
from datetime import date
from pathlib import Path
from urllib.parse import quote

from web.control import FILE_NAME, find_running_app


class CommandError(Exception):
    """A command that cannot run as asked; its message is shown as is."""


def run(args, settings) -> int:
    handler = {"export": export_cmd, "retrain": retrain_cmd, "adapters": adapters_cmd, "users": users_cmd,
               "train-node": train_node_cmd, "data": data_cmd}
    return handler[args.command](args, settings)


def _segment(name: str) -> str:
    """``name`` as one URL path segment: a name holding "/", "?" or "#", or one that is "." or "..", must not
    reach another route (httpx drops dot segments, so those dots are escaped too)."""
    segment = quote(name, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


@contextlib.contextmanager
def _app_answers(info: dict):
    """Turn the running app not answering into a sentence (the pid in running-app.json may be another process)."""
    import httpx

    try:
        yield
    except httpx.ConnectError:
        raise CommandError(f"the app recorded in {FILE_NAME} (PID {info.get('pid')}, {info.get('url')}) does not "
                           f"answer; if no Tuneloop app runs on this data dir, delete that file") from None
    except httpx.HTTPError as exc:
        raise CommandError(f"the running app at {info.get('url')} did not answer: {exc or type(exc).__name__}") from None


def _call_app(info: dict, method: str, path: str, body: dict | None = None, timeout: float = 3600,
              no_route: str | None = None) -> dict:
    """``no_route``: what to say when no route matches the path (a name the app could never hold, like "a/b")."""
    import httpx

    with _app_answers(info):
        response = httpx.request(method, info["url"] + path, json=body, timeout=timeout,
                                 headers={"Authorization": f"Bearer {info['token']}"})
    if response.status_code >= 400:
        raise CommandError(_error_message(response.status_code, response.text, no_route))
    return response.json()


def _error_message(status: int, text: str, no_route: str | None = None) -> str:
    """The message of the app's error body ({"error": {"message": ..., "code": ...}}), else what it said."""
    try:
        error = json.loads(text)["error"]
        message, code = error["message"], error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = code = None
    if status == 404 and code in (None, "not_found") and no_route:  # routing's 404, not the core's
        return no_route
    return str(message) if message else f"the app answered {status}: {text[:200]}"


@contextlib.contextmanager
def _data_dir_free(settings):
    """Turn DuckDB's "Could not set lock" into a sentence: another process (an app that left no
    running-app.json, or another command) holds the database file."""
    import duckdb

    try:
        yield
    except duckdb.IOException as exc:
        if "Could not set lock" not in str(exc):
            raise
        pid = re.search(r"\(PID (\d+)\)", str(exc))
        raise CommandError(
            f"the data dir {settings.data_dir} is in use by another process{f' (PID {pid[1]})' if pid else ''}: "
            f"if it is the app, it left no {FILE_NAME} to reach it by, so use its admin API or UI, or stop it "
            "and run the command again") from None


def _store(settings):
    from feedback.store import FeedbackStore

    if not settings.db_path.exists():
        raise CommandError(f"no database at {settings.db_path}: run the app once or check --data-dir")
    with _data_dir_free(settings):
        return FeedbackStore(settings.db_path)


# DuckDB's memory in the export command: the export streams, so a year of data needs no more than a week's
# (measured in bench/scale.py); DuckDB spills what does not fit to disk.
EXPORT_MEMORY_MB = 128


def export_target(out: str, data_dir: Path, force: bool = False) -> Path:
    """The file ``export --out`` may write, or a CommandError saying why not; checks only, writes nothing.

    Never inside the data dir (paths compared resolved, so neither a symlink nor ".." gets there): an export
    renamed over ``tuneloop.duckdb`` or ``users.toml`` replaces the app's own files, under it if it runs.
    An existing file only with ``force``; never a folder or anything but a regular file. One created after
    this check is still never replaced without ``force`` (``feedback.export.written_to``).
    """
    if not out:
        raise CommandError("--out needs a file name")
    path = Path(out)
    root = Path(data_dir).resolve()
    resolved = path.resolve()
    if resolved.is_relative_to(root):
        raise CommandError(f"--out {out} is inside the data dir {root}: export to a file outside it")
    if path.is_dir():
        raise CommandError(f"--out {out} is a folder: name a file")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise CommandError(f"--out {out} exists and is not a regular file")
        if not force:
            raise CommandError(f"--out {out} exists: pass --force to replace it")
    parent = resolved.parent
    while not parent.exists():  # the folders export creates: the first that exists must take them
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"cannot write --out {out}: {parent} is not a folder this user may write to")
    return path


def _since(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        raise CommandError(f"--since {text!r} is not a date: use YYYY-MM-DD, e.g. 2024-05-01") from None


def export_cmd(args, settings) -> int:
    since = _since(args.since)
    out = export_target(args.out, settings.data_dir, args.force)
    info = find_running_app(settings.data_dir)
    if info:
        with _writing(out):
            _download_export(info, out, args.format, since, args.rated_only, args.force)
        print(f"exported to {out} (through the running app)")
        return 0
    from feedback.export import export

    store = _store(settings)
    store.limit_memory(EXPORT_MEMORY_MB)
    try:
        with _writing(out):
            n = export(store, out, args.format, since=since, rated_only=args.rated_only, replace=args.force)
    finally:
        store.close()
    print(f"exported {n} rows to {out}")
    return 0


@contextlib.contextmanager
def _writing(out: Path):
    try:
        yield
    except FileExistsError:  # checked absent, but created while the export ran: theirs stays
        raise CommandError(f"--out {out} was created while exporting and was left as it is: "
                           "pass --force to replace it") from None
    except OSError as exc:  # export_target checked, but disks fill and folders change: still one sentence
        raise CommandError(f"cannot write --out {out}: {exc.strerror or exc}") from None


def _download_export(info: dict, out: Path, fmt: str, since: date | None, rated_only: bool, replace: bool) -> None:
    import httpx

    from feedback.export import written_to

    params = {"format": fmt, "rated_only": str(rated_only).lower()}
    if since:
        params["since"] = since.isoformat()
    # Streamed to a temp file beside ``out``: a year of data never sits in memory, and a failed download
    # leaves the old file as it was.
    with written_to(out, replace) as tmp, _app_answers(info), \
            httpx.stream("GET", info["url"] + "/v1/admin/export", params=params, timeout=600,
                         headers={"Authorization": f"Bearer {info['token']}"}) as r:
        if r.status_code >= 400:
            raise CommandError(_error_message(r.status_code, r.read().decode(errors="replace")))
        with tmp.open("wb") as f:
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)


def retrain_cmd(args, settings) -> int:
    info = find_running_app(settings.data_dir)
    if info:
        result = _call_app(info, "POST", "/v1/admin/retrain", {"promote": args.promote, "wait": True, "force": True})
        if result.get("status") == "already_running":
            raise CommandError(f"a retrain run is already in progress: {result['run']['id']}")
        run = result["run"]
    else:
        from app import build_context

        with _data_dir_free(settings):
            ctx = build_context(settings)
        try:
            run = ctx.retrain.trigger(actor="cli", trigger="cli", promote=args.promote, force=True, wait=True)["run"]
        finally:
            ctx.backend.close()
            ctx.store.close()
    if args.json:
        print(json.dumps(run, default=str, indent=2))
    else:
        gate = run.get("gate") or {}
        print(f"run {run['id']}: {run['status']}" + (f" — adapter {run['adapter']}" if run.get("adapter") else ""))
        for a in run.get("attempts") or []:
            r = a.get("recipe") or {}
            print(f"  attempt {a['attempt']}: {a['status']} (learning rate {r.get('learning_rate', 0):.3g}, "
                  f"{r.get('num_epochs')} epochs, anchors x{r.get('distill_scale')})")
        for reason in gate.get("reasons", []):
            print(f"  {reason}")
        if run.get("error"):
            print(f"  {run['error']}")
    return 0 if run["status"] in ("succeeded", "rejected", "skipped") else 1


def adapters_cmd(args, settings) -> int:
    info = find_running_app(settings.data_dir)
    if args.action == "list":
        if info:
            board = _call_app(info, "GET", "/v1/adapters")
            rows = board["adapters"]
            production = board["production"]
        else:
            store = _store(settings)
            try:
                rows = [{"name": r.name, "status": r.status, "parent": r.parent} for r in store.list_adapter_records()]
                production = store.production()
            finally:
                store.close()
        print(f"production -> {production}")
        for row in rows:
            print(f"  {row['name']:<16} {row['status']:<10} parent={row.get('parent')}")
        return 0
    if args.action == "promote" and not args.name:
        raise CommandError("adapters promote needs a NAME")
    if info:
        if args.action == "rollback":
            result = _call_app(info, "POST", "/v1/admin/adapters/rollback", {"to": args.to, "reason": args.reason})
        else:
            result = _call_app(info, "POST", f"/v1/admin/adapters/{_segment(args.name)}/promote",
                               {"reason": args.reason}, no_route=f"unknown adapter {args.name!r}")
        print(f"production -> {result['production']}")
        return 0
    from retrain.promotion import Promoter

    store = _store(settings)
    try:
        promoter = Promoter(store, None, settings)  # no app running: the app applies it when it starts
        if args.action == "rollback":
            target = promoter.rollback(args.to, actor="cli", reason=args.reason or "rollback from the CLI")
        else:
            promoter.promote(args.name, actor="cli", reason=args.reason or "promoted from the CLI")
            target = args.name
    finally:
        store.close()
    print(f"production -> {target}")
    return 0


def users_cmd(args, settings) -> int:
    from web.auth import users_directory

    users = users_directory(settings)
    if args.action == "list":
        for name in users.names():
            print(f"{name}\t{users.principal(name).role}")
        return 0
    if not args.name:
        raise CommandError(f"users {args.action} needs a NAME")
    if args.action == "add":
        # An empty --password is a password too short, not a request to be asked for one.
        password = args.password if args.password is not None else _ask_password(args.name)
        role = users.add_user(args.name, password, args.role)
        print(f"user {args.name} ({role}) saved in {settings.users_path}")
    else:
        print(users.create_token(args.name))
    return 0


def _ask_password(name: str) -> str:
    try:
        return getpass.getpass(f"password for {name}: ")
    except EOFError:  # no terminal, and stdin ended before a line: end the prompt's line first
        print(file=sys.stderr)
        raise CommandError("no password given: pass --password or run the command on a terminal") from None


def train_node_cmd(args, settings) -> int:
    """Another machine of a multi-machine training set-up: run its ranks of each run the app starts."""
    from retrain.launch import join

    try:
        join(settings.runs_dir, args.machine_rank)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    except KeyboardInterrupt:
        pass
    return 0


def data_cmd(args, settings) -> int:
    """The review queue from the command line: through the running app when there is one, else the file."""
    from web.auth import UserDirectory

    info = find_running_app(settings.data_dir)
    if args.action == "list":
        from web.api_review import MAX_PAGE

        if not 1 <= args.limit <= MAX_PAGE:
            raise CommandError(f"--limit must be between 1 and {MAX_PAGE}, not {args.limit}")
        state = args.state or "pending_review"
        if info:
            from urllib.parse import urlencode

            page = _call_app(info, "GET", "/v1/admin/data/review?" + urlencode({"state": state, "limit": args.limit}))
            rows, total = page["rows"], page["total"]
        else:
            store = _store(settings)
            try:
                rows, total = store.review_rows(state=None if state == "all" else state, limit=args.limit)
            finally:
                store.close()
        print(f"{total} rated answers in state {state}" + (f" (showing {len(rows)})" if total > len(rows) else ""))
        for r in rows:
            text = (r["correction"] or r["answer"] or "").replace("\n", " ")
            print(f"  {r['message_id']}  {r['state']:<14} {r['user']:<12} rejections={r['rejections']}  "
                  f"{text[:60]!r}" + (f"\n      {r['reason']}" if r.get("reason") else ""))
        return 0
    if args.action == "trust":
        if not args.ids:
            rows = (_call_app(info, "GET", "/v1/admin/data/trust")["users"] if info else _offline(
                settings, lambda s: s.list_user_trust()))
            for r in rows:
                print(f"{r['user']}\t{'trusted' if r['trusted'] else 'not trusted'}\tset by {r['actor']}")
            return 0
        if len(args.ids) != 1:
            raise CommandError("data trust takes one user NAME")
        name, trusted = args.ids[0], not args.off
        if info:
            n = _call_app(info, "PUT", f"/v1/admin/data/trust/{_segment(name)}", {"trusted": trusted},
                          no_route=f"unknown user {name!r}")["requeued"]
        else:
            principal = UserDirectory(settings.users_path).principal(name)
            if principal is None:
                raise CommandError(f"unknown user {name!r}")
            n = _offline(settings, lambda s: s.set_user_trust(name, trusted, actor="cli", admin=principal.is_admin,
                                                              review_untrusted=settings.review_untrusted))
        print(f"{name}: {'trusted' if trusted else 'not trusted'}"
              + ("" if trusted else f"; {n} rated answers they judged while trusted taken back (not trained yet)"))
        return 0
    if not args.ids:
        raise CommandError(f"data {args.action} needs message ids (see `data list`)")
    if info:
        n = _call_app(info, "POST", f"/v1/admin/data/{args.action}", {"message_ids": args.ids,
                                                                         "reason": args.reason})["updated"]
    else:
        method = "include_rows" if args.action == "include" else "discard_rows"
        n = _offline(settings, lambda s: getattr(s, method)(args.ids, actor="cli", reason=args.reason))
    print(f"{n} rated answers {'included' if args.action == 'include' else 'discarded'}")
    return 0


def _offline(settings, work):
    store = _store(settings)
    try:
        return work(store)
    finally:
        store.close()
