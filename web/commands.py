"""The command-line subcommands of ``python app.py``: export, retrain, adapters, users, data.

Commands that write to the store go through the running app when there is one (it owns the DuckDB
file) and open the file themselves otherwise.
"""

from __future__ import annotations

import getpass
import json
from datetime import date
from pathlib import Path

from web.control import find_running_app


class CommandError(Exception):
    """A command that cannot run as asked; its message is shown as is."""


def run(args, settings) -> int:
    handler = {"export": export_cmd, "retrain": retrain_cmd, "adapters": adapters_cmd, "users": users_cmd,
               "train-node": train_node_cmd, "data": data_cmd}
    return handler[args.command](args, settings)


def _call_app(info: dict, method: str, path: str, body: dict | None = None, timeout: float = 3600) -> dict:
    import httpx

    response = httpx.request(method, info["url"] + path, json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {info['token']}"})
    data = response.json()
    if response.status_code >= 400:
        raise CommandError(data.get("error", {}).get("message", response.text))
    return data


def _store(settings):
    from feedback.store import FeedbackStore

    if not settings.db_path.exists():
        raise CommandError(f"no database at {settings.db_path}: run the app once or check --data-dir")
    return FeedbackStore(settings.db_path)


# DuckDB's memory in the export command: the export streams, so a year of data needs no more than a week's
# (measured in bench/scale.py); DuckDB spills what does not fit to disk.
EXPORT_MEMORY_MB = 128


def export_cmd(args, settings) -> int:
    since = date.fromisoformat(args.since) if args.since else None
    info = find_running_app(settings.data_dir)
    out = Path(args.out)
    if info:
        import httpx

        params = {"format": args.format, "rated_only": str(args.rated_only).lower()}
        if since:
            params["since"] = since.isoformat()
        # Streamed to a temp file beside ``out`` and renamed: a year of data never sits in memory, and a
        # failed download leaves the old file as it was.
        tmp = out.with_name(f".{out.name}.download")
        try:
            with httpx.stream("GET", info["url"] + "/v1/admin/export", params=params, timeout=600,
                              headers={"Authorization": f"Bearer {info['token']}"}) as r:
                if r.status_code >= 400:
                    raise CommandError(r.read().decode(errors="replace"))
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        f.write(chunk)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        print(f"exported to {out} (through the running app)")
        return 0
    from feedback.export import export

    store = _store(settings)
    store.limit_memory(EXPORT_MEMORY_MB)
    try:
        n = export(store, out, args.format, since=since, rated_only=args.rated_only)
    finally:
        store.close()
    print(f"exported {n} rows to {out}")
    return 0


def retrain_cmd(args, settings) -> int:
    info = find_running_app(settings.data_dir)
    if info:
        result = _call_app(info, "POST", "/v1/admin/retrain", {"promote": args.promote, "wait": True, "force": True})
        if result.get("status") == "already_running":
            raise CommandError(f"a retrain run is already in progress: {result['run']['id']}")
        run = result["run"]
    else:
        from app import build_context

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
            result = _call_app(info, "POST", f"/v1/admin/adapters/{args.name}/promote", {"reason": args.reason})
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
        password = args.password or getpass.getpass(f"password for {args.name}: ")
        users.add_user(args.name, password, args.role)
        print(f"user {args.name} ({args.role}) saved in {settings.users_path}")
    else:
        print(users.create_token(args.name))
    return 0


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
            _call_app(info, "PUT", f"/v1/admin/data/trust/{name}", {"trusted": trusted})
        else:
            if UserDirectory(settings.users_path).principal(name) is None:
                raise CommandError(f"unknown user {name!r}")
            _offline(settings, lambda s: s.set_user_trust(name, trusted, actor="cli"))
        print(f"{name}: {'trusted' if trusted else 'not trusted'}")
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
