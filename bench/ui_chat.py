"""Chat page answers for several users at once, through Gradio's queue as the page calls it.

    python bench/ui_chat.py [--users 8] [--max-tokens 32] [--demo-build DIR] [--write-results]

Each user (a signed-in page session) sends one message and waits for the whole answer; all start together.
Run twice in one go on the same demo model: with ``ui_concurrency=1`` (Gradio's own default, what the page
had before) and with the default. Prints the wall time until every user has an answer and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import append_result, machine  # noqa: E402


def one_round(data_dir: Path, users: int, max_tokens: int, ui_concurrency: int) -> dict:
    from tests.web.conftest import add_users, start_app
    from tests.web.test_ui_handlers import Session

    names = [f"user{i}" for i in range(users)]
    add_users(data_dir, ("admin", *names))
    app = start_app(data_dir, temperature=0.7, max_new_tokens=max_tokens, ui_concurrency=ui_concurrency)
    try:
        sessions = [Session(app, name) for name in names]
        for i, s in enumerate(sessions):
            assert s.call("ui_user_turn", f"Tell me about topic {i}.", None)[0]

        def answer(s) -> float:
            t0 = time.perf_counter()
            ok, out = s.call("ui_bot_turn", None, "production")
            assert ok, out
            return time.perf_counter() - t0

        started = time.perf_counter()
        with ThreadPoolExecutor(users) as pool:
            latencies = list(pool.map(answer, sessions))
        return {"wall": time.perf_counter() - started, "latencies": sorted(latencies)}
    finally:
        app.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--demo-build", type=Path, default=None, help="copy this demo build (model/ and adapters/)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()

    from serving.demo_model import ensure_demo_model
    from settings import Settings

    default = Settings.model_fields["ui_concurrency"].default
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        if args.demo_build is not None:
            shutil.copytree(args.demo_build / "model", demo / "demo-model")
            shutil.copytree(args.demo_build / "adapters", demo / "adapters")
        ensure_demo_model(demo / "demo-model", demo / "adapters")
        for limit in (1, default):
            data_dir = Path(tmp) / f"ui{limit}" / "data"
            shutil.copytree(demo, data_dir)
            results[limit] = one_round(data_dir, args.users, args.max_tokens, limit)
    print(f"setup: {machine()}; demo model; {args.users} page sessions answer at once, max_new_tokens={args.max_tokens}")
    for limit, r in results.items():
        lat = r["latencies"]
        print(f"ui_concurrency={limit}: all answered in {r['wall']:.2f} s; per user min / median / max "
              f"{lat[0]:.2f} / {lat[len(lat) // 2]:.2f} / {lat[-1]:.2f} s")
    line = (f"{args.users} users at once, max_new_tokens {args.max_tokens}: wall {results[default]['wall']:.2f} s at "
            f"ui_concurrency={default} vs {results[1]['wall']:.2f} s at 1 = "
            f"{results[default]['wall'] / results[1]['wall']:.2f}x")
    print(line)
    if args.write_results:
        append_result("ui_chat", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
