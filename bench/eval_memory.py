"""Evaluation peak memory: the chunked completion NLL against the full-logits one it replaced.

    python bench/eval_memory.py [--answers 4] [--tokens 1000] [--vocab 151936] [--write-results]

A random-weight Qwen2-architecture model with Qwen2.5's vocabulary (151,936) is saved next to the demo
tokenizer (no hub needed); each way of scoring runs in a fresh process, which reports how far its resident
memory rose above where it stood just before the call (sampled every millisecond). The target (issue 20):
the new call's peak growth at most a quarter of the batch's full fp32 logits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.results import append_result  # noqa: E402

PAGE = 4096


def old_completion_nll(model, tokenizer, prompts, answers, batch_size=8):
    """The evaluation before issue 20, kept here only for this comparison: full fp32 logits of the batch
    plus a full-vocabulary log_softmax copy."""
    import torch

    from retrain.evaluate import completion_text
    from serving.chat_format import render_prompt

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size], strict=True):
            p_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(completion_text(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
            rows.append((p_ids, c_ids))
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:]
        picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        valid = target != -100
        nll = -(picked * valid).sum(dim=1)
        out.extend((float(nll[i]), int(valid[i].sum())) for i in range(len(rows)))
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def measure(model_dir: str, way: str, answers: int, tokens: int) -> dict:
    """In this process: load the model, score ``answers`` answers of about ``tokens`` tokens, report peak growth."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.evaluate import completion_nll

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    words = "the quick brown fox jumps over a lazy dog while rain falls on the quiet city".split()
    text = " ".join(words[i % len(words)] for i in range(tokens * 2))
    ids = tok(text, add_special_tokens=False)["input_ids"][:tokens]
    answer = tok.decode(ids)
    prompts = [[{"role": "user", "content": f"Write a long story, number {i}."}] for i in range(answers)]
    fn = completion_nll if way == "new" else old_completion_nll
    fn(model, tok, prompts[:1], ["warm up"])  # first-call allocations are not what is measured
    before = peak = _rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    scores = fn(model, tok, prompts, [answer] * answers)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    peak = max(peak, _rss())
    n_tokens = sum(n for _, n in scores)
    full_logits = answers * max(n for _, n in scores) * model.config.vocab_size * 4
    return {"way": way, "peak_growth_bytes": peak - before, "seconds": round(seconds, 2), "tokens": n_tokens,
            "full_logits_bytes": full_logits, "nll": [round(s, 2) for s, _ in scores]}


def build_model(root: Path, vocab: int) -> str:
    """A random Qwen2-architecture model with ``vocab`` rows, saved beside the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from serving.demo_model import ensure_demo_model

    demo = ensure_demo_model(root / "demo")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    out = root / "qwen2-random"
    Qwen2ForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(demo).save_pretrained(out)
    return str(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.answers, args.tokens)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), args.vocab)
        results = {}
        for way in ("old", "new"):
            out = subprocess.run([sys.executable, __file__, "--answers", str(args.answers), "--tokens",
                                  str(args.tokens), "--child", model_dir, way],
                                 capture_output=True, text=True, check=True)
            results[way] = json.loads(out.stdout.strip().splitlines()[-1])
    old, new = results["old"], results["new"]
    mb = 1 << 20
    print(f"{args.answers} answers x ~{args.tokens} tokens, vocabulary {args.vocab}: "
          f"full fp32 logits {old['full_logits_bytes'] / mb:.0f} MB")
    for r in (old, new):
        print(f"  {r['way']}: peak growth {r['peak_growth_bytes'] / mb:.0f} MB, {r['seconds']} s")
    same = all(abs(a - b) <= 1e-3 * max(abs(a), 1) for a, b in zip(old["nll"], new["nll"], strict=True))
    ratio = new["peak_growth_bytes"] / old["peak_growth_bytes"]
    share = new["peak_growth_bytes"] / new["full_logits_bytes"]
    print(f"new/old peak growth {ratio:.3f}; new growth / full logits {share:.3f} (target <= 0.25); "
          f"same scores: {same}")
    if args.write_results:
        append_result("eval_memory", f"{args.answers} answers x ~{args.tokens} tokens, vocab {args.vocab}: peak "
                      f"growth old {old['peak_growth_bytes'] / mb:.0f} MB, new {new['peak_growth_bytes'] / mb:.0f} MB "
                      f"(ratio {ratio:.3f}; new/full logits {share:.3f}, target <= 0.25); same scores {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
