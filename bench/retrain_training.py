"""Retrain training bench: wall time with 10x more history at the same new data, and QLoRA throughput.

    python bench/retrain_training.py [--new 40] [--history 40] [--model ID_OR_PATH] [--processes 2]
        [--strategies ddp,fsdp,zero2,zero3] [--write-results]

The replay sample is sized by the new data (``replay_ratio x new``, drawn from history by
``retrain.dataset.sample_replay``), so a 10x longer history should cost at most 1.3x the training time.
Runs on the offline demo model on CPU; with CUDA it also trains ``--model`` (default
Qwen/Qwen2.5-0.5B-Instruct, must be available locally) with QLoRA and prints tokens/s and peak GPU memory.
``--processes N`` also trains the same snapshot with one and with N processes under accelerate, once per
strategy in ``--strategies`` (DDP; FSDP, which shards the base; DeepSpeed ZeRO-2 and ZeRO-3: gloo on the
CPU; one GPU each where there are N GPUs) and prints each wall-time ratio and held-out loss: on a CPU box with few cores N processes
share the same cores, so the ratio shows the distributed overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.results import append_result  # noqa: E402

TOPICS = ["the sea", "a city", "bread", "music", "a cat", "rain", "the moon", "a river", "tea", "a book"]


def _row(i: int, tag: str) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    return {"prompt": [{"role": "user", "content": f"Tell me something about {topic} ({tag} {i})."}],
            "completion": [{"role": "assistant", "content": f"Here is a short note about {topic}: it is number {i} "
                            f"of the {tag} examples, and it is written to be about as long as a real answer."}]}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def build_snapshot(root: Path, new: list[dict], n_history: int, replay_ratio: float, seed: int) -> Path:
    """A snapshot whose sft_train is the new rows plus a replay sample drawn from ``n_history`` earlier rows."""
    from retrain.dataset import Snapshot, sample_replay

    hist_dir = root / "history"
    hist_dir.mkdir(parents=True)
    _write(hist_dir / "sft_train.jsonl", [_row(i, "history") for i in range(n_history)])
    now = datetime.now(UTC)
    history = Snapshot(id="history", path=hist_dir, cutoff=now, previous_cutoff=None, counts={},
                       content_hash="", created_at=now)
    replay = sample_replay([history], round(replay_ratio * len(new)), seed)
    snap = root / "snapshot"
    snap.mkdir()
    _write(snap / "sft_train.jsonl", [{"prompt": e.prompt, "completion": [{"role": "assistant", "content": e.completion}]}
                                      for e in replay] + new)
    _write(snap / "sft_heldout.jsonl", new[:4])
    (snap / "manifest.json").write_text(json.dumps({"snapshot_id": f"bench-{n_history}", "content_hash": ""}))
    return snap


def time_training(root: Path, base: str, snapshot: Path, **fields) -> dict:
    from retrain.training import TrainSpec, run_training
    from settings import Settings

    spec = TrainSpec.from_settings(Settings(), run_id=root.name, base_model=base, snapshot_dir=str(snapshot),
                                   output_dir=str(root / "adapter"), progress_path=str(root / "progress.jsonl"),
                                   **fields)
    start = time.perf_counter()
    outcome = run_training(spec)
    return {**outcome.report["train"], "outer_wall_s": time.perf_counter() - start,
            "heldout_loss": outcome.report["candidate"]["heldout_loss"]}


def main() -> None:
    import torch

    from serving.demo_model import ensure_demo_model
    from settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=40, help="new SFT examples in both snapshots")
    ap.add_argument("--history", type=int, default=40, help="history size H (the second run uses 10H)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="model for the CUDA QLoRA measurement")
    ap.add_argument("--processes", type=int, default=2, help="also compare 1 vs this many training processes (1: skip)")
    ap.add_argument("--strategies", default="ddp,fsdp,zero2,zero3",
                    help="strategies for the N-process runs: ddp, fsdp, zeroK (DeepSpeed ZeRO stage K)")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    settings = Settings()

    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as tmp:
        tmp = Path(tmp)
        base = str(ensure_demo_model(tmp / "demo"))
        new = [_row(i, "new") for i in range(args.new)]
        walls = {}
        for n_history in (args.history, 10 * args.history):
            snap = build_snapshot(tmp / f"h{n_history}", new, n_history, settings.replay_ratio, settings.seed)
            result = time_training(tmp / f"h{n_history}", base, snap, device="cpu", num_epochs=args.epochs,
                                   early_stopping_patience=0, preference_min_pairs=10**9)
            walls[n_history] = result["wall_s"]
            print(f"history {n_history:5d}: train wall {result['wall_s']:.1f}s, steps {result['steps']}, "
                  f"tokens {result['tokens']} (child incl. start-up {result['outer_wall_s']:.1f}s)")
        ratio = walls[10 * args.history] / walls[args.history]
        print(f"setup: demo model on CPU, new={args.new}, replay_ratio={settings.replay_ratio}, epochs={args.epochs}")
        print(f"10x history / 1x history training wall time: {ratio:.2f}x (target <= 1.3x)")
        line = (f"demo model CPU, new={args.new}, history {args.history} vs {10 * args.history}: "
                f"train wall {walls[args.history]:.1f}s vs {walls[10 * args.history]:.1f}s = {ratio:.2f}x (target <= 1.3x)")

        if args.processes > 1:
            snap = build_snapshot(tmp / "dist", new, args.history, settings.replay_ratio, settings.seed)
            gpus = torch.cuda.device_count() >= args.processes
            device = "cuda:0" if gpus else "cpu"
            common = dict(device=device, num_epochs=args.epochs, early_stopping_patience=0,
                          preference_min_pairs=10**9)
            runs = {"1 process": time_training(tmp / "dist1", base, snap, **common)}
            for name in args.strategies.split(","):
                strategy, stage = ("deepspeed", int(name[4:])) if name.startswith("zero") else (name, 0)
                runs[f"{args.processes} {name}"] = time_training(
                    tmp / f"dist-{name}", base, snap, processes=args.processes, strategy=strategy, zero_stage=stage,
                    **common)
            where = f"{args.processes} GPUs" if gpus else f"CPU, {os.cpu_count()} cores (overhead, not speed-up)"
            one = runs["1 process"]
            for name, r in runs.items():
                print(f"{name}: wall {r['outer_wall_s']:.1f}s incl. start-up (training {r['wall_s']:.1f}s), "
                      f"steps {r['steps']}, effective batch {r['effective_batch']}, "
                      f"held-out loss {r['heldout_loss']:.4f}")
            ratios = {name: r["outer_wall_s"] / one["outer_wall_s"] for name, r in runs.items() if r is not one}
            for name, ratio_p in ratios.items():
                print(f"{name} / 1 process wall time: {ratio_p:.2f}x ({where})")
            line += f"; training processes on {where}, wall vs 1 process: " + ", ".join(
                f"{name} {ratio_p:.2f}x (held-out loss {runs[name]['heldout_loss']:.4f} vs "
                f"{one['heldout_loss']:.4f})" for name, ratio_p in ratios.items())

        if torch.cuda.is_available():
            snap = build_snapshot(tmp / "qlora", new * 5, args.history, settings.replay_ratio, settings.seed)
            result = time_training(tmp / "qlora", args.model, snap, device="cuda", quantization="4bit",
                                   num_epochs=1, early_stopping_patience=0, preference_min_pairs=10**9)
            tps = result["tokens"] / result["wall_s"]
            peak = result.get("peak_gpu_mem_bytes", 0) / 2**30
            print(f"QLoRA {args.model}: {tps:.0f} training tokens/s, peak GPU memory {peak:.2f} GiB")
            line += f"; QLoRA {args.model}: {tps:.0f} tok/s, peak {peak:.2f} GiB"
        if args.write_results:
            append_result("retrain training", line)


if __name__ == "__main__":
    main()
