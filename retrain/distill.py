"""Self-distillation replay: anchor a training set with the production model's own answers.

A concentrated lesson (forty phrasings of one fact, nothing else rated) pulls every update the same way;
without anything else in the batch the adapter drifts on general text and the gate rejects it on
forgetting. Replaying earlier training rows helps only when users happened to rate everyday chats. So
before training, the production adapter answers a shipped set of broad prompts (``distill_prompts.jsonl``:
everyday advice, explanations, writing, arithmetic, small talk; distinct from the gate's reference set),
and those answers are trained on beside the lesson: the model is asked to keep saying what it already says.

This is generative replay (Shin et al. 2017, "Continual Learning with Deep Generative Replay") with the
model as its own generator, and the self-distillation idea of SDFT (Yang et al. 2024, "Self-Distillation
Bridges Distribution Gap in Language Model Fine-Tuning"): targets drawn from the model's own distribution
cost little loss to fit, so they hold that distribution in place while the new data moves the rest.

Answers are generated once per production adapter (and base, prompt set and length limit) and cached
under ``<data_dir>/distill/``; a run and all its attempts reuse them. Only answers that ended within
``distill_max_new_tokens`` are used: a cut-off answer would teach the model to stop mid-sentence.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from retrain.clean import normalise, same_answer

PROMPTS_PATH = Path(__file__).parent / "distill_prompts.jsonl"


def load_prompts(path: str | Path | None = None) -> list[str]:
    path = Path(path or PROMPTS_PATH)
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cache_path(cache_dir: str | Path, production: str, base_model: str, max_new_tokens: int,
               prompts_path: str | Path | None = None) -> Path:
    """Where the anchors of ``production`` live; the name changes with anything that changes them."""
    prompts = Path(prompts_path or PROMPTS_PATH).read_bytes()
    key = hashlib.sha256(b"\0".join([prompts, base_model.encode(), str(max_new_tokens).encode()])).hexdigest()[:16]
    return Path(cache_dir) / f"{production}-{key}.jsonl"


def anchor_count(n_new: int, n_replay: int, ratio: float, scale: float, available: int) -> int:
    """Anchors for ``n_new`` new rows: ``ratio`` per new row, less the replayed rows already there, times
    the attempt's ``scale``; at most what the prompt set gave."""
    return max(0, min(available, round((ratio * n_new - n_replay) * scale)))


def drop_spills(anchors: list[dict], answers: Iterable[str]) -> list[dict]:
    """``anchors`` less those whose answer is one of ``answers`` (the training rows' answers), whole or cut.

    Production answering a general prompt with a taught sentence ("How do I stay focused?" -> "The guest
    wifi is called Harbor...") is a lesson spilled where it does not belong; distilled, it would teach the
    spill as everyday behaviour and hold it against the next lesson's corrections. Measured on the four-cycle
    test (bench/continual.py): after the wifi lesson, 26 of production's 76 anchors were the wifi sentence,
    and the next lesson (parking) reached 30% of its held-out phrasings, which were answered with it.
    """
    taught = {normalise(a) for a in answers if a and a.strip()}

    def spilled(row: dict) -> bool:
        said = normalise(row["completion"][-1]["content"])  # once per anchor, not once per taught answer
        return any(same_answer(said, t) for t in taught)

    return [r for r in anchors if not spilled(r)]


def pick(anchors: list[dict], n: int, seed: int) -> list[dict]:
    rows = list(anchors)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def generate_anchors(generate, prompts: list[str], system_prompt: str) -> list[dict]:
    """Rows in the SFT snapshot shape from ``generate(list of message lists) -> [(text, finished)]``.

    Every other prompt carries the UI's system prompt, as served traffic does (the API sends none).
    """
    messages = [([{"role": "system", "content": system_prompt}] if i % 2 == 0 and system_prompt else [])
                + [{"role": "user", "content": p}] for i, p in enumerate(prompts)]
    out = []
    for i, (prompt, (text, finished)) in enumerate(zip(messages, generate(messages), strict=True)):
        if finished and text.strip():
            out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": text.strip()}],
                        "source_id": f"distill:{i}"})
    return out


def load_or_generate(path: str | Path, make) -> list[dict]:
    """The cached anchors at ``path``, or ``make()``'s, written atomically for the next run."""
    path = Path(path)
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return rows
