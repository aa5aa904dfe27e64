"""32 simulated users against one app for a minute: latency per request kind, zero 5xx, zero lost writes.

Each user (a thread with its own token, in a client process apart from the server's GIL) streams chat
turns, rates the answers (some with a correction) and fights and votes arena battles; meanwhile an admin
hot-swaps production between demo-a, demo-b and base, and starts one retrain. Every acknowledged message
id, rating and vote is then looked up in DuckDB.

    python bench/load.py [--users 32] [--seconds 60] [--scheduler both|continuous|static] [--no-retrain]
                         [--chat-max-tokens 8]
                         [--write-results]

By default the same load runs twice in one go, on the same demo model: first on the static scheduler
the worker had before continuous batching (``bench/static_batching.py``), then on today's continuous
one; target: chat TTFT p50 and p95 <= 1/3 of static's with aggregate answer tokens/s at least equal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import append_result, machine  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is 0 (a run with no answers), so the comparison fails instead of raising."""
    return a / b if b else float("nan")


def user_loop(url: str, token: str, name: str, until: float, seed: int, chat_max_tokens: int = 8) -> dict:
    """One simulated user; returns what the server acknowledged and how long each kind took.

    A lost connection ends the user early and is noted in ``disconnected`` (the kill -9 test causes it on
    purpose); what was acknowledged before it is kept.
    """
    import httpx

    out = {"messages": [], "ratings": [], "votes": [], "errors": [], "lat": {}, "disconnected": None, "tokens": 0}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        try:
            _user_requests(c, random.Random(seed), name, until, out, chat_max_tokens)
        except httpx.TransportError as exc:
            out["disconnected"] = f"{type(exc).__name__}: {exc}"
    return out


def _user_requests(c, rnd: random.Random, name: str, until: float, out: dict, chat_max_tokens: int = 8) -> None:
    def timed(kind: str, t0: float) -> None:
        out["lat"].setdefault(kind, []).append(time.perf_counter() - t0)

    def status(kind: str, r) -> None:
        if r.status_code >= 500:
            out["errors"].append(f"{kind} {r.status_code} {r.text[:200]}")

    i = 0
    while time.time() < until:
        i += 1
        if rnd.random() < 0.2:  # an arena battle and its vote
            t0 = time.perf_counter()
            r = c.post("/v1/arena/battles", json={"prompt": f"{name} battle {i}", "max_tokens": 4})
            timed("battle", t0)
            status("battle", r)
            if r.status_code != 200:
                continue
            t0 = time.perf_counter()
            v = c.post(f"/v1/arena/battles/{r.json()['id']}/vote", json={"winner": rnd.choice("ab")})
            timed("vote", t0)
            status("vote", v)
            if v.status_code == 200:
                out["votes"].append(r.json()["id"])
            continue
        t0 = time.perf_counter()
        first = None
        message_id = None
        done = False
        tokens = 0
        # OpenAI streams send usage (in a last chunk with no choices) only when asked to.
        body = {"messages": [{"role": "user", "content": f"{name} question {i}"}],
                "max_tokens": chat_max_tokens,
                "stream": True, "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            status("chat", r)
            if r.status_code >= 500:
                r.read()
                continue
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out["errors"].append(f"chat in-band {chunk['error']}")
                    break
                message_id = chunk["id"]
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens", 0)
                if not chunk["choices"]:  # the usage chunk
                    continue
                if first is None and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
        timed("chat_total", t0)
        if first is not None:
            out["lat"].setdefault("chat_ttft", []).append(first)
        if not done or message_id is None:
            continue
        out["messages"].append(message_id)
        out["tokens"] += tokens
        if rnd.random() < 0.7:
            fb = {"message_id": message_id, "rating": rnd.choice(["up", "down"])}
            if fb["rating"] == "down" and rnd.random() < 0.5:
                fb["correction"] = f"A better answer for {name} {i}."
            t0 = time.perf_counter()
            f = c.post("/v1/feedback", json=fb)
            timed("feedback", t0)
            status("feedback", f)
            if f.status_code == 200:
                out["ratings"].append([message_id, name, fb["rating"]])


def run_users(url: str, tokens: dict[str, str], seconds: float, chat_max_tokens: int = 8) -> list[dict]:
    """All simulated users as threads in this (client) process."""
    until = time.time() + seconds
    results: list[dict] = []
    lock = threading.Lock()

    def one(i: int, name: str) -> None:
        r = user_loop(url, tokens[name], name, until, i, chat_max_tokens)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def admin_loop(app, token: str, until: float, out: dict) -> None:
    """Hot-swap production a few times and start one retrain, while the users run."""
    with app.client(token, timeout=120) as c:
        r = c.post("/v1/admin/retrain", json={"promote": "manual"})
        out["retrain"] = r.status_code
        if r.status_code >= 500:
            out["errors"].append(f"retrain {r.status_code} {r.text[:200]}")
        else:
            out["run_id"] = (r.json().get("run") or {}).get("id")
        targets = ["demo-a", "demo-b", "base"]
        i = 0
        while time.time() < until - 2:
            r = c.post(f"/v1/admin/adapters/{targets[i % 3]}/promote", json={"reason": "load test"})
            out["swaps"] += r.status_code == 200
            if r.status_code >= 500:
                out["errors"].append(f"promote {r.status_code} {r.text[:200]}")
            i += 1
            time.sleep(2)


def add_users(data_dir: Path, users: int) -> tuple[str, dict[str, str]]:
    """An admin and ``users`` users with API tokens in ``data_dir``'s users file: (admin token, {name: token})."""
    from web.auth import UserDirectory

    directory = UserDirectory(data_dir / "users.toml")
    directory.add_user("admin", "admin-password", "admin")
    tokens = {}
    for i in range(users):
        directory.add_user(f"user{i}", f"user{i}-password", "user")
        tokens[f"user{i}"] = directory.create_token(f"user{i}")
    return directory.create_token("admin"), tokens


def teach(url: str, token: str, n: int) -> None:
    """Rated data so the retrain has something to train on."""
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        for i in range(n):
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"Who are you {i}?"}],
                                                     "max_tokens": 4})
            c.post("/v1/feedback", json={"message_id": r.json()["id"], "rating": "down",
                                         "correction": "I am Tuneloop, a self-hosted assistant."})


def run_load(data_dir: Path, users: int = 32, seconds: float = 60, retrain: bool = True,
             scheduler: str = "continuous", chat_max_tokens: int = 8) -> dict:
    """Start the app on ``data_dir`` (demo model already there), run the load, check every write.

    ``scheduler="static"`` serves with the bench's copy of the pre-continuous worker loop.
    """
    import contextlib

    from bench.static_batching import static_scheduler
    from tests.web.conftest import start_app

    admin_token, tokens = add_users(data_dir, users)
    with static_scheduler() if scheduler == "static" else contextlib.nullcontext():
        app = start_app(data_dir, temperature=0.7, max_batch_size=32, retrain_min_examples=1)
    admin = {"errors": [], "swaps": 0}
    try:
        if retrain:
            teach(app.url, admin_token, 12)
        admin_thread = threading.Thread(target=admin_loop, args=(app, admin_token, time.time() + seconds, admin))
        # Clients run in another process, so their threads do not compete for the server's GIL.
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            started = time.perf_counter()
            future = pool.submit(run_users, app.url, tokens, seconds, chat_max_tokens)
            admin_thread.start()
            results = future.result()
            wall = time.perf_counter() - started
        admin_thread.join()
        deadline = time.time() + 600  # let the retrain finish: its end must not break anything either
        while app.ctx.retrain.current_run and time.time() < deadline:
            time.sleep(1)
        run = app.ctx.store.get_run(admin["run_id"]) if admin.get("run_id") else None
        lat: dict[str, list[float]] = {}
        for r in results:
            for k, v in r["lat"].items():
                lat.setdefault(k, []).extend(v)
        disconnected = [f"disconnected: {r['disconnected']}" for r in results if r["disconnected"]]
        return {
            **lost_writes(app.ctx.store, results),
            "errors": [e for r in results for e in r["errors"]] + disconnected + admin["errors"],
            "swaps": admin["swaps"], "run_status": run["status"] if run else None,
            "run_error": run.get("error") if run else None, "latency": lat,
            "tokens_per_s": sum(r["tokens"] for r in results) / wall, "scheduler": scheduler,
            "server_ttft_mean_s": _server_ttft_mean(app.ctx.metrics),
        }
    finally:
        app.stop()


def _server_ttft_mean(metrics) -> float:
    """The worker's own mean time to first token (submitted to the worker -> first text), from ``/metrics``'
    histogram: what the client's TTFT has beyond it is HTTP, auth, the store and the GIL."""
    total = count = 0.0
    for family in metrics.ttft.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total / count if count else float("nan")


def lost_writes(store, results: list[dict]) -> dict:
    """How many messages, ratings and votes the users saw acknowledged, and which of them ``store`` lacks."""
    messages = [m for r in results for m in r["messages"]]
    ratings = [tuple(x) for r in results for x in r["ratings"]]
    votes = [v for r in results for v in r["votes"]]
    missing_messages = [m for m in messages if store.get_message(m) is None]
    # Each answer is rated once, by the user who asked: the stored (user, rating) must match exactly.
    stored_ratings = {e.message_id: (e.user, e.rating) for e in store.rated_examples()}
    missing_ratings = [m for m, u, rating in ratings if stored_ratings.get(m) != (u, rating)]
    stored_votes = {v.battle_id for v in store.arena_votes()}
    return {
        "messages": len(messages), "missing_messages": missing_messages,
        "ratings": len(ratings), "missing_ratings": len(missing_ratings),
        "votes": len(votes), "missing_votes": sorted(set(votes) - stored_votes),
    }


def summary(res: dict) -> list[str]:
    lines = []
    for kind in ("chat_ttft", "chat_total", "feedback", "battle", "vote"):
        v = res["latency"].get(kind, [])
        lines.append(f"{kind:11s} n={len(v):5d}  p50 {pct(v, .5) * 1000:7.0f} ms  p95 {pct(v, .95) * 1000:7.0f} ms  "
                     f"p99 {pct(v, .99) * 1000:7.0f} ms")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--scheduler", choices=["both", "continuous", "static"], default="both")
    ap.add_argument("--no-retrain", action="store_true", help="skip the retrain started during the load")
    ap.add_argument("--demo-build", type=Path, default=None,
                    help="copy this demo build (its model/ and adapters/ directories) instead of building one")
    ap.add_argument("--chat-max-tokens", type=int, default=8,
                    help="answer length cap of each chat turn (8: the demo's short answers; longer answers are the "
                         "case continuous batching is for)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()

    from serving.demo_model import ensure_demo_model

    schedulers = ["static", "continuous"] if args.scheduler == "both" else [args.scheduler]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        if args.demo_build is not None:
            shutil.copytree(args.demo_build / "model", demo / "demo-model")
            shutil.copytree(args.demo_build / "adapters", demo / "adapters")
        ensure_demo_model(demo / "demo-model", demo / "adapters")  # builds only what is missing or stale
        for name in schedulers:
            data_dir = Path(tmp) / name / "data"  # a fresh store per run, the same model files
            shutil.copytree(demo, data_dir)
            results[name] = run_load(data_dir, args.users, args.seconds, retrain=not args.no_retrain, scheduler=name,
                                     chat_max_tokens=args.chat_max_tokens)
    print(f"setup: {machine()}; demo model; {args.users} users for {args.seconds:.0f} s per scheduler; streaming chat "
          f"max_tokens={args.chat_max_tokens}, feedback on 70% of answers, 20% arena battles + votes; hot-swaps"
          f"{'' if args.no_retrain else ' and one retrain'} meanwhile")
    failed = False
    for name, res in results.items():
        client_ttft = res["latency"].get("chat_ttft", [])
        print(f"--- {name} scheduler: {res['tokens_per_s']:.1f} chat answer tokens/s aggregate; mean TTFT "
              f"{sum(client_ttft) / max(len(client_ttft), 1) * 1000:.0f} ms at the client, "
              f"{res['server_ttft_mean_s'] * 1000:.0f} ms of it in the worker (submit -> first token)")
        for line in summary(res):
            print(line)
        print(f"acknowledged: {res['messages']} messages, {res['ratings']} ratings, {res['votes']} votes; missing in "
              f"DuckDB: {len(res['missing_messages'])} / {res['missing_ratings']} / {len(res['missing_votes'])}; "
              f"5xx/in-band errors: {len(res['errors'])}; swaps {res['swaps']}; retrain {res['run_status']}")
        for e in res["errors"][:10]:
            print("  error:", e)
        failed = failed or bool(res["errors"])
        if args.write_results:
            append_result("load", result_line(name, args, res))
    if len(results) == 2:
        st, co = (results[k] for k in ("static", "continuous"))
        ratios = [ratio(pct(co["latency"].get("chat_ttft", []), q), pct(st["latency"].get("chat_ttft", []), q))
                  for q in (.5, .95)]
        tps = ratio(co["tokens_per_s"], st["tokens_per_s"])
        line = (f"continuous / static: chat TTFT p50 {ratios[0]:.2f}x, p95 {ratios[1]:.2f}x (target <= 0.33x); "
                f"answer tokens/s {tps:.2f}x (target >= 1x)")
        print(line)
        if args.write_results:
            append_result("load", f"{args.users} users {args.seconds:.0f} s, max_tokens {args.chat_max_tokens}, {line}")
        failed = failed or not (all(r <= 1 / 3 for r in ratios) and tps >= 1)  # NaN fails too
    return 1 if failed else 0


def result_line(name: str, args, res: dict) -> str:
    chat = res["latency"].get("chat_total", [])
    ttft = res["latency"].get("chat_ttft", [])
    return (f"{args.users} users {args.seconds:.0f} s, max_tokens {args.chat_max_tokens}, {name} scheduler: "
            f"chat total p50/p95/p99 "
            f"{pct(chat, .5) * 1000:.0f}/{pct(chat, .95) * 1000:.0f}/{pct(chat, .99) * 1000:.0f} ms, ttft "
            f"{pct(ttft, .5) * 1000:.0f}/{pct(ttft, .95) * 1000:.0f}/{pct(ttft, .99) * 1000:.0f} ms, "
            f"{res['tokens_per_s']:.1f} answer tok/s; {res['messages']} messages, {res['ratings']} ratings, "
            f"{res['votes']} votes, lost {len(res['missing_messages']) + res['missing_ratings'] + len(res['missing_votes'])}"
            f", 5xx {len(res['errors'])}, swaps {res['swaps']}, retrain {res['run_status']}")


if __name__ == "__main__":
    sys.exit(main())
