"""A static near-duplicate embedder distilled from the shipped MiniLM: a vector per token, a text is their mean.

Why: MiniLM embeds 13-17 texts/s on 2 CPU cores, so a first near-dup pass over a year of rated answers
takes hours. A static model (model2vec's method, Tulkens & van Dongen 2024) runs each vocabulary token
through MiniLM once, reduces the vectors with PCA and weights them by a Zipf estimate of how common the
token is (SIF); a text is then the mean of its tokens' rows: tens of thousands of texts/s on the same CPU.
Written here rather than taken from the ``model2vec`` package: its ``distill`` extra pins
``transformers<5.4`` (it would downgrade ours), and what inference needs is a tokenizer (the MiniLM
``tokenizer.json``, run by ``tokenizers``, already a dependency) and a numpy matrix.

Distilled offline at first use from the installed MiniLM package (1-6 minutes on 2 shared cores) and
cached in ``settings.embedders_dir`` (one per machine, shared by data dirs); it appears by rename, complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PREFIX = "static:"  # settings.embedding_model = "static:<source model>" selects this embedder
DISTILL_VERSION = 3  # raise when distillation changes: a cached model of another version is rebuilt
DIMS = 256
SIF_COEFFICIENT = 1e-4
MAX_TOKENS = 512  # per text, as MiniLM's window
MAX_CACHED_WORDS = 500_000  # distinct words whose token ids are kept between calls


def is_static(name: str) -> bool:
    return str(name).startswith(PREFIX)


def model_dir(name: str, embedders_dir: str | Path) -> Path:
    source = str(name)[len(PREFIX):]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    return Path(embedders_dir) / f"static-{safe}-v{DISTILL_VERSION}"


def load_static(name: str, embedders_dir: str | Path) -> StaticEmbedder:
    """The static model for ``static:<source>``, distilled into ``embedders_dir`` first if it is not there."""
    path = model_dir(name, embedders_dir)
    if not (path / "meta.json").is_file():
        distill(str(name)[len(PREFIX):], path)
    return StaticEmbedder(path)


def distill(source: str, out: Path, dims: int = DIMS, batch_size: int = 512) -> Path:
    """Distil ``source`` (a sentence-transformers model name or path) into a static model at ``out``."""
    import torch

    from retrain.dedup import load_embedder

    model = load_embedder(source, device="cpu")
    transformer = model[0].auto_model  # the encoder under sentence-transformers' pooling and normalizing
    tokenizer = model.tokenizer
    vocab = tokenizer.get_vocab()
    ids = np.array(sorted(vocab.values()), dtype=np.int64)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    log.info("distilling a static embedder from %s: %d tokens", source, len(ids))
    rows = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            chunk = torch.as_tensor(ids[start:start + batch_size])[:, None]
            # "[SEP] token [CLS]" (reversed) and the plain mean of the hidden states, as model2vec distils
            # (``create_output_embeddings_from_model``). Against "[CLS] token [SEP]" through the normalized
            # sentence embedding, on tests/retrain/near_dup_pairs.jsonl: ROC AUC 0.941 vs 0.902, recall /
            # precision at 0.95 0.850 / 0.864 vs 0.800 / 0.828; the held-out pairs agree (AUC 0.625 vs 0.562).
            input_ids = torch.cat([torch.full_like(chunk, sep), chunk, torch.full_like(chunk, cls)], dim=1)
            hidden = transformer(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            rows.append(hidden.mean(dim=1).float().numpy())
    vectors = np.concatenate(rows)
    vectors -= vectors.mean(axis=0)
    # PCA by SVD: the main directions of the token vectors, which also decorrelates them.
    _, _, vt = np.linalg.svd(vectors, full_matrices=False)
    vectors = vectors @ vt[:dims].T
    # SIF weights from a Zipf estimate of token frequency by rank (WordPiece ids roughly follow frequency).
    rank = np.arange(1, len(ids) + 1, dtype=np.float64)
    p = 1.0 / rank
    p /= p.sum()
    # Squared: measured on tests/retrain/near_dup_pairs.jsonl, plain SIF weights leave common words
    # ("what is the capital of") enough weight that "France" vs "Germany" scored 0.94; squared, 0.90.
    vectors *= ((SIF_COEFFICIENT / (SIF_COEFFICIENT + p)) ** 2)[:, None]
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "embeddings.npy", vectors.astype(np.float32))
        source_dir = Path(model.tokenizer.name_or_path)
        shutil.copy(source_dir / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps({"source": source, "dims": dims, "version": DISTILL_VERSION,
                                                   "lowercase": bool(getattr(tokenizer, "do_lower_case", True))}))
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "meta.json").is_file():  # another process won the race: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("static embedder written to %s", out)
    return out


class StaticEmbedder:
    """``encode`` as SentenceTransformer's (the arguments the pipeline uses): the mean of token vectors."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        self.path = path
        self.matrix = np.load(path / "embeddings.npy")
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._word_ids: dict[str, list[int]] = {}

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, as the tokenizer gives them (no special tokens, at most MAX_TOKENS).

        WordPiece splits on whitespace before anything else, so a text's ids are its whitespace-separated
        words' ids in order: each distinct word goes through the tokenizer once, and chat text repeats its
        words, which makes this several times faster than tokenizing every text.
        """
        words = self._word_ids
        new = list({w: None for t in texts for w in t.split() if w not in words})
        if new:
            if len(words) + len(new) > MAX_CACHED_WORDS:
                words.clear()
                new = list({w: None for t in texts for w in t.split()})
            for w, e in zip(new, self.tokenizer.encode_batch(new, add_special_tokens=False), strict=True):
                words[w] = e.ids
        out = []
        for t in texts:
            ids = [i for w in t.split() for i in words[w]]
            out.append(ids[:MAX_TOKENS])
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 4096, normalize_embeddings: bool = True,
               convert_to_numpy: bool = True, show_progress_bar: bool = False, **_) -> np.ndarray:
        from scipy import sparse

        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.matrix.shape[1]), dtype=np.float32)
        step = max(1, int(batch_size))
        for start in range(0, len(texts), step):
            batch = self.token_ids(list(texts[start:start + step]))
            lengths = np.array([len(ids) for ids in batch])
            if not lengths.sum():
                continue
            flat = np.fromiter((i for ids in batch for i in ids), dtype=np.int64, count=int(lengths.sum()))
            # Mean of the rows as one sparse (texts x vocabulary) product: numpy's reduceat over rows is
            # ten times slower.
            weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
            counts = sparse.csr_matrix((weights, flat, np.r_[0, np.cumsum(lengths)]),
                                       shape=(len(batch), self.matrix.shape[0]))
            out[start:start + len(batch)] = counts @ self.matrix
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
