"""Continual learning on the demo model: four retrain cycles, each teaching one new fact with only that
cycle's lesson rated (45 phrasings, thumbs-down + correction), through the real HTTP API.

    python bench/continual.py [--write-results]

After each cycle it asks the held-out phrasings of every fact taught so far (never trained on) and
prints the retention table: share answered with the taught sentence per fact, and the reference
perplexity of production relative to the base model. Target after the fourth cycle: >= 80% on every
fact, and the perplexity rise within the gate's ``gate_max_ppl_rise``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere


def reference_ppl(base: Path, adapter: Path | None) -> float:
    """Perplexity of base (+ adapter) on the gate's general reference set."""
    from peft import PeftModel

    from retrain.evaluate import evaluate, load_reference
    from serving.model_loading import load_base_model

    model, tokenizer = load_base_model(str(base), "none")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return evaluate(model, tokenizer, [], [], load_reference())["reference_ppl"]


def run_cycles(data_dir: Path, lessons, on_cycle=None) -> list[dict]:
    """Teach ``lessons`` one per cycle in the app at ``data_dir`` (seeded with the demo model); one row per cycle."""
    from tests.retrain.test_learning_holds import hits, teach
    from tests.web.conftest import start_app

    app = start_app(data_dir, temperature=0.0, promotion="auto", retrain_min_examples=1)
    base = data_dir / "demo-model"
    base_ppl = reference_ppl(base, None)
    rows = []
    try:
        with app.client(timeout=1800) as c:
            for k, lesson in enumerate(lessons):
                started = time.monotonic()
                teach(c, lesson, app)
                run = c.post("/v1/admin/retrain", json={"wait": True}).json()["run"]
                row = {"cycle": k + 1, "taught": lesson.name, "status": run["status"], "adapter": run.get("adapter"),
                       "attempts": len(run.get("attempts") or []), "error": run.get("error"),
                       "hits": {earlier.name: hits(c, earlier) / len(earlier.heldout) for earlier in lessons[: k + 1]},
                       "wall_s": round(time.monotonic() - started, 1),
                       # What the gate's earlier-lessons check saw on the attempt that decided (retrain/lesson_check.py).
                       "lessons_check": [r for r in (run.get("gate") or {}).get("reasons", [])
                                         if r.startswith("lessons_kept")]}
                production = c.get("/v1/adapters").json()["production"]
                adapter = None if production == "base" else data_dir / "adapters" / production  # none promoted yet
                row["ppl_rise_vs_base"] = reference_ppl(base, adapter) / base_ppl - 1
                rows.append(row)
                if on_cycle:
                    on_cycle(row)
    finally:
        app.stop()
    return rows


def table(rows: list[dict], lessons) -> str:
    names = [lesson.name for lesson in lessons]
    lines = ["| after cycle | " + " | ".join(names) + " | ref. ppl vs base | attempts | wall s |",
             "|---" * (len(names) + 4) + "|"]
    for r in rows:
        cells = [f"{r['hits'][n]:.0%}" if n in r["hits"] else "" for n in names]
        lines.append(f"| {r['cycle']} ({r['status']}) | " + " | ".join(cells)
                     + f" | {r['ppl_rise_vs_base']:+.1%} | {r['attempts']} | {r['wall_s']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-results", action="store_true")
    args, _ = parser.parse_known_args()  # run_all hands every script the same flags

    from bench.results import append_result
    from serving.demo_model import ensure_demo_model
    from tests.retrain.lessons import LESSONS

    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-continual-"))
    try:
        data_dir = tmp / "data"
        ensure_demo_model(data_dir / "demo-model")
        print("continual learning: demo model, 4 cycles, 45 phrasings per fact, only that cycle's lesson rated")
        rows = run_cycles(data_dir, LESSONS, on_cycle=lambda r: print(r, flush=True))
        print(table(rows, LESSONS))
        last = rows[-1]
        summary = ("4 cycles, one fact each, only its lesson rated; held-out retention after cycle 4: "
                   + ", ".join(f"{n} {h:.0%}" for n, h in last["hits"].items())
                   + f"; reference ppl {last['ppl_rise_vs_base']:+.1%} vs base; statuses "
                   + "/".join(r["status"] for r in rows))
        print(summary)
        if args.write_results:
            append_result("continual", summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
