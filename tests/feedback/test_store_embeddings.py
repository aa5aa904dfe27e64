"""The embedding cache: looked up by key, per model; pruned to what snapshots still hold."""

from __future__ import annotations

import feedback.store_ratings as store_ratings


def test_lookup_by_key_per_model_and_prune(store, monkeypatch):
    store.put_embeddings("m1", {f"k{i}": [float(i), 1.0] for i in range(30)})
    store.put_embeddings("m2", {"k1": [9.0, 9.0], "other": [1.0, 2.0]})
    got = store.get_embeddings("m1", ["k1", "k2", "k2", "missing", "other"])
    assert got == {"k1": [1.0, 1.0], "k2": [2.0, 1.0]}
    assert store.get_embeddings("m2", ["k1"]) == {"k1": [9.0, 9.0]}
    monkeypatch.setattr(store_ratings, "KEY_CHUNK", 7)  # several chunks of index lookups
    assert set(store.get_embeddings("m1", [f"k{i}" for i in range(40)])) == {f"k{i}" for i in range(30)}
    assert store.prune_embeddings("m1", ["k1", "k5", "nothing"]) == 28 + 2
    assert store.get_embeddings("m1", [f"k{i}" for i in range(30)]) == {"k1": [1.0, 1.0], "k5": [5.0, 1.0]}
    assert store.get_embeddings("m2", ["k1", "other"]) == {}


def test_prune_keeps_every_stage_of_a_cascade(store):
    store.put_embeddings("static", {"k1": [1.0], "k2": [2.0]})
    store.put_embeddings("minilm", {"k1": [3.0], "k2": [4.0]})
    store.put_embeddings("old", {"k1": [5.0]})
    assert store.prune_embeddings(["static", "minilm"], ["k1"]) == 3
    assert store.get_embeddings("static", ["k1", "k2"]) == {"k1": [1.0]}
    assert store.get_embeddings("minilm", ["k1", "k2"]) == {"k1": [3.0]}
    assert store.get_embeddings("old", ["k1"]) == {}
