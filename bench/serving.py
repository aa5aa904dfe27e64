"""Serving bench: continuous vs static scheduling under 32 users, batched vs one-at-a-time throughput,
and adapter hot-swap vs a base-model reload.

    python bench/serving.py [--model ID_OR_PATH] [--quantization auto|4bit|8bit|none] [--write-results]
    python bench/serving.py --structured [...]   # tokens/s of grammar-constrained vs free decoding

Without ``--model`` it builds and serves the offline demo model. Targets: under 32 closed-loop users
with mixed answer lengths, continuous batching's TTFT p50 and p95 <= 1/3 of the static scheduler's
(``bench/static_batching.py``, the loop the worker had before) at >= its aggregate tokens/s; 8
concurrent requests >= 3x the tokens/s of the same 8 run one at a time; hot-swap far below a reload.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.results import RESULTS, machine  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def run_requests(backend, adapters: list[str], params, concurrent: bool) -> tuple[float, int]:
    """Wall seconds and total completion tokens for one request per adapter name."""
    tokens = []
    together = threading.Barrier(len(adapters)) if concurrent else None

    def one(name):
        if together is not None:
            together.wait()  # 8 users pressing send at once, not staggered by thread start-up
        stream = backend.stream_chat(PROMPT, name, params, ignore_eos=True)
        stream.text()
        tokens.append(stream.completion.completion_tokens)

    start = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=one, args=(n,)) for n in adapters]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for n in adapters:
            one(n)
    return time.perf_counter() - start, sum(tokens)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def users_run(backend, adapters: list[str], users: int, seconds: float, lengths: tuple[int, ...]) -> dict:
    """``users`` closed-loop users for ``seconds``: each asks, reads the whole answer, asks again.

    Answer lengths are drawn from ``lengths`` (eos ignored) with a fixed seed per user, so both
    schedulers see the same mix. Returns TTFT percentiles and aggregate completion tokens/s.
    """
    from serving.types import SamplingParams

    ttft, tokens, lock = [], [], threading.Lock()
    together = threading.Barrier(users)
    until = [0.0]

    def user(i: int):
        rnd = random.Random(i)
        together.wait()
        time.sleep(i * 2.0 / users)  # users arrive over 2 s, not as one burst both schedulers serve alike
        while time.perf_counter() < until[0]:
            params = SamplingParams(max_tokens=rnd.choice(lengths), temperature=0.7)
            prompt = [{"role": "user", "content": f"user {i} asks question {rnd.randrange(1000)}"}]
            stream = backend.stream_chat(prompt, adapters[i % len(adapters)], params, ignore_eos=True)
            stream.text()
            with lock:
                tokens.append(stream.completion.completion_tokens)
                if stream.completion.first_token_s is not None:
                    ttft.append(stream.completion.first_token_s)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    start = time.perf_counter()
    until[0] = start + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"p50": pct(ttft, .5), "p95": pct(ttft, .95), "tps": sum(tokens) / wall, "requests": len(tokens)}


def compare_schedulers(model: str, quantization: str, adapters_dir: Path, users: int, seconds: float,
                       lengths: tuple[int, ...], max_new_tokens: int) -> dict[str, dict]:
    """The same user load on the static scheduler, then on continuous batching, same model and settings."""
    from bench.static_batching import StaticBackend
    from serving.local import LocalBackend
    from serving.types import BASE

    out = {}
    for name, cls in (("static", StaticBackend), ("continuous", LocalBackend)):
        backend = cls(model, quantization=quantization, adapters_dir=adapters_dir, max_new_tokens=max_new_tokens,
                      max_batch_size=users)
        try:
            backend.load_adapter("bench-a", adapters_dir / "bench-a")
            names = [BASE, "bench-a"]
            users_run(backend, names, 4, 2.0, lengths)  # warm-up
            out[name] = users_run(backend, names, users, seconds, lengths)
        finally:
            backend.close()
        r = out[name]
        print(f"{name:10s} {users} users {seconds:.0f}s: TTFT p50 {r['p50'] * 1000:7.1f} ms  p95 "
              f"{r['p95'] * 1000:7.1f} ms; {r['tps']:7.1f} tok/s aggregate ({r['requests']} answers)")
    return out


STRUCTURED_PROMPTS = ["Describe a person.", "Write a short poem about the sea.", "What is Python?",
                      "Hello, how are you today?"]
STRUCTURED_SCHEMA = {  # nested, with an open-ended array and strings, so the grammar has work at every step
    "type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "address"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string"}},
                   "address": {"type": "object", "required": ["city"], "additionalProperties": False,
                               "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}}}


def structured_cost(backend, requests: int, max_tokens: int) -> tuple[float, float]:
    """Tokens/s of the same prompts decoded freely and under a JSON-schema grammar (batched, sampled).

    The constrained answers end when their JSON closes, so throughput is compared per token, not per answer.
    """
    import json

    from serving.structured import StructuredOutput
    from serving.types import BASE, SamplingParams

    spec = StructuredOutput("json_schema", schema=STRUCTURED_SCHEMA, strict=True)
    prompts = [STRUCTURED_PROMPTS[i % len(STRUCTURED_PROMPTS)] for i in range(requests)]

    def run(structured) -> tuple[float, int]:
        together = threading.Barrier(len(prompts))
        results, errors = [], []

        def one(prompt):
            try:
                answer(prompt)
            except Exception as exc:  # reported after the run: a bench must not count a failure as fast
                errors.append(exc)

        def answer(prompt):
            together.wait()
            params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=7, structured=structured)
            stream = backend.stream_chat([{"role": "user", "content": prompt}], BASE, params,
                                         ignore_eos=structured is None)
            text = stream.text()
            if structured is not None:
                json.loads(text)  # every constrained answer must parse
            results.append(stream.completion.completion_tokens)

        threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - start, sum(results)

    run(None)  # warm-up, and llguidance's tokenizer (built once per tokenizer)
    run(spec)
    free_s, free_tok = run(None)
    cons_s, cons_tok = run(spec)
    free_tps, cons_tps = free_tok / free_s, cons_tok / cons_s
    print(f"free decoding: {free_tok} tokens in {free_s:.2f}s = {free_tps:.1f} tok/s")
    print(f"JSON-schema constrained: {cons_tok} tokens in {cons_s:.2f}s = {cons_tps:.1f} tok/s (all parsed)")
    print(f"constrained / free throughput: {cons_tps / free_tps:.2f}x")
    return free_tps, cons_tps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub id or path; default: the offline demo model")
    parser.add_argument("--quantization", default="auto", choices=["auto", "4bit", "8bit", "none"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--users", type=int, default=32, help="closed-loop users in the scheduler comparison")
    parser.add_argument("--seconds", type=float, default=60, help="length of each scheduler's user run")
    parser.add_argument("--lengths", default="8,16,32,64", help="answer lengths the users draw from")
    parser.add_argument("--write-results", action="store_true", help=f"append a line to {RESULTS}")
    parser.add_argument("--structured", action="store_true", help="only measure constrained vs free decoding")
    args = parser.parse_args(argv)

    from serving.demo_model import build_demo_adapter, ensure_demo_model
    from serving.local import LocalBackend
    from serving.model_loading import load_base_model
    from serving.types import BASE, PRODUCTION, SamplingParams

    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    try:
        model = args.model or str(ensure_demo_model(work / "demo-model"))
        adapters_dir = work / "adapters"
        model_path = model  # a directory or a hub id: the adapter builder loads either
        for i, name in enumerate(("bench-a", "bench-b")):
            build_demo_adapter(Path(model_path), adapters_dir / name, seed=i + 1)
        if args.structured:
            backend = LocalBackend(model, quantization=args.quantization, adapters_dir=adapters_dir,
                                   max_new_tokens=args.max_tokens, max_batch_size=args.requests)
            print(f"setup: model={model} device={backend.device} quantization={backend.quantization} "
                  f"machine={machine()} requests={args.requests} max_tokens={args.max_tokens}")
            try:
                free_tps, cons_tps = structured_cost(backend, args.requests, args.max_tokens)
            finally:
                backend.close()
            if args.write_results:
                with RESULTS.open("a") as f:
                    f.write(f"- {dt.date.today().isoformat()} structured output: machine={machine()} "
                            f"model={args.model or 'demo'} constrained/free={cons_tps / free_tps:.2f}x ({cons_tps:.0f} "
                            f"vs {free_tps:.0f} tok/s, {args.requests} req batched, llguidance JSON schema)\n")
            return 0
        lengths = tuple(int(x) for x in args.lengths.split(","))
        print(f"setup: model={model} machine={machine()} users={args.users} answer lengths={lengths} (eos "
              f"ignored), temperature 0.7, base + bench-a mixed; max_batch_size={args.users}")
        sched = compare_schedulers(model, args.quantization, adapters_dir, args.users, args.seconds, lengths,
                                   max(max(lengths), args.max_tokens))
        st, co = sched["static"], sched["continuous"]
        p50_ratio, p95_ratio, tps_ratio = co["p50"] / st["p50"], co["p95"] / st["p95"], co["tps"] / st["tps"]
        print(f"continuous / static: TTFT p50 {p50_ratio:.2f}x, p95 {p95_ratio:.2f}x (target <= 0.33x); "
              f"tokens/s {tps_ratio:.2f}x (target >= 1x)")
        sched_ok = p50_ratio <= 1 / 3 and p95_ratio <= 1 / 3 and tps_ratio >= 1

        backend = LocalBackend(model, quantization=args.quantization, adapters_dir=adapters_dir,
                               max_new_tokens=args.max_tokens, max_batch_size=args.requests)
        print(f"device={backend.device} quantization={backend.quantization} requests={args.requests} "
              f"max_tokens={args.max_tokens} (eos ignored)")

        start = time.perf_counter()
        backend.load_adapter("bench-a", adapters_dir / "bench-a")
        first_load_s = time.perf_counter() - start
        start = time.perf_counter()
        backend.load_adapter("bench-b", adapters_dir / "bench-b")
        load_s = time.perf_counter() - start

        params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
        names = [(BASE, "bench-a", "bench-b")[i % 3] for i in range(args.requests)]
        run_requests(backend, names[:3], params, concurrent=True)  # warm-up
        seq_s, seq_tok = run_requests(backend, names, params, concurrent=False)
        steps_before = backend._worker.steps
        par_s, par_tok = run_requests(backend, names, params, concurrent=True)
        steps = backend._worker.steps - steps_before
        seq_tps, par_tps = seq_tok / seq_s, par_tok / par_s
        speedup = par_tps / seq_tps

        swaps = []
        for target in ("bench-a", "bench-b", BASE) * 10:
            start = time.perf_counter()
            backend.set_alias(PRODUCTION, target)
            swaps.append(time.perf_counter() - start)
        swap_s = sorted(swaps)[len(swaps) // 2]
        start = time.perf_counter()
        reloaded, _ = load_base_model(backend.model_path, args.quantization)
        reload_s = time.perf_counter() - start
        del reloaded
        backend.close()

        print(f"one at a time: {seq_tok} tokens in {seq_s:.2f}s = {seq_tps:.1f} tok/s")
        print(f"batched ({steps} decode steps, mixed base/bench-a/bench-b): {par_tok} tokens in {par_s:.2f}s "
              f"= {par_tps:.1f} tok/s")
        print(f"batched / one-at-a-time throughput: {speedup:.2f}x (target >= 3x)")
        print(f"adapter load: {load_s * 1000:.1f} ms (first, wraps the model in peft: {first_load_s * 1000:.1f} ms)")
        print(f"production re-point (hot-swap): {swap_s * 1e6:.1f} us median")
        print(f"full base-model reload: {reload_s * 1000:.1f} ms")
        print(f"reload / adapter load: {reload_s / load_s:.1f}x; reload / hot-swap: {reload_s / swap_s:.0f}x")

        if args.write_results:
            if not RESULTS.exists():
                RESULTS.write_text("# Bench results\n\nOne line per run, newest last.\n\n")
            line = (f"- {dt.date.today().isoformat()} serving: machine={machine()} model={args.model or 'demo'} "
                    f"quant={backend.quantization} batched/sequential={speedup:.2f}x ({par_tps:.0f} vs "
                    f"{seq_tps:.0f} tok/s, {args.requests} req x {args.max_tokens} tok); adapter load "
                    f"{load_s * 1000:.0f} ms; hot-swap {swap_s * 1e6:.0f} us; base reload {reload_s * 1000:.0f} ms "
                    f"({reload_s / load_s:.0f}x load); {args.users} users continuous vs static: TTFT p50 "
                    f"{co['p50'] * 1000:.0f} vs {st['p50'] * 1000:.0f} ms ({p50_ratio:.2f}x), p95 {co['p95'] * 1000:.0f} "
                    f"vs {st['p95'] * 1000:.0f} ms ({p95_ratio:.2f}x), {co['tps']:.0f} vs {st['tps']:.0f} tok/s "
                    f"({tps_ratio:.2f}x), answers of {args.lengths} tokens\n")
            with RESULTS.open("a") as f:
                f.write(line)
            print(f"wrote a line to {RESULTS}")
        return 0 if speedup >= 3 and sched_ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
