"""Build a training-set snapshot from rated feedback: select → scrub → views → clean → dedup → split → snapshot.

Three views of one selection, in TRL's conversational formats, one JSONL file each:

- SFT (``prompt``/``completion``): thumbs-up answers, and corrections in place of the answer they fix;
- KTO, unpaired preference (+ ``label``): ups true, downs false, a correction true and its original false;
- preference pairs (``prompt``/``chosen``/``rejected``): correction vs corrected answer, and arena votes.

PII is scrubbed from the selection before anything else sees it, so no file, manifest or cache
holds it. A snapshot directory appears by rename with its manifest written last: a directory
with ``manifest.json`` is complete; anything else under ``datasets_dir`` is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from feedback.models import PreferencePair, RatedExample
from feedback.store_turns import MODEL
from retrain.clean import (
    CountTokens,
    Example,
    cap_untrusted,
    cap_user_share,
    drop_empty,
    drop_long,
    drop_short,
    normalise,
    same_answer,
)
from retrain.dedup import EmbeddingCache, _dialogue, exact_dedup, near_dedup, near_dup_embedders, text_key
from retrain.pii import CachedScrubber
from retrain.split import split

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SFT_TRAIN, SFT_HELDOUT = "sft_train.jsonl", "sft_heldout.jsonl"
KTO_TRAIN = "kto_train.jsonl"
PREF_TRAIN, PREF_HELDOUT = "pref_train.jsonl", "pref_heldout.jsonl"
LESSONS = "lessons.jsonl"  # what earlier published runs taught, asked by the gate (retrain/lesson_check.py)
DATA_FILES = (SFT_TRAIN, SFT_HELDOUT, KTO_TRAIN, PREF_TRAIN, PREF_HELDOUT, LESSONS)
ROWS = "rows.json"  # the rated answers (message ids) in the snapshot's files: what a rejection counts against

# The settings that decide a snapshot's content, recorded in its manifest.
DATA_SETTINGS = ("replay_ratio", "min_answer_chars", "max_example_tokens", "dedup_threshold", "embedding_model",
                 "dedup_confirm_model", "dedup_candidate_threshold", "dedup_confirm_budget_s",
                 "max_user_share", "max_untrusted_user_rows", "max_untrusted_answer_rows", "heldout_fraction", "seed",
                 "gate_lesson_probes")


@dataclass(frozen=True)
class Snapshot:
    """A complete training-set directory and what its manifest says about it."""

    id: str
    path: Path
    cutoff: datetime
    previous_cutoff: datetime | None
    counts: dict
    content_hash: str
    created_at: datetime

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """Read a snapshot from its directory; FileNotFoundError when it has no manifest (incomplete)."""
        path = Path(path)
        m = json.loads((path / MANIFEST).read_text())
        return cls(id=m["snapshot_id"], path=path, cutoff=datetime.fromisoformat(m["cutoff"]),
                   previous_cutoff=_parse_dt(m["previous_cutoff"]), counts=m["counts"],
                   content_hash=m["content_hash"], created_at=datetime.fromisoformat(m["created_at"]))

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def sft_train_path(self) -> Path:
        return self.path / SFT_TRAIN

    @property
    def sft_heldout_path(self) -> Path:
        return self.path / SFT_HELDOUT

    @property
    def kto_train_path(self) -> Path:
        return self.path / KTO_TRAIN

    @property
    def pref_train_path(self) -> Path:
        return self.path / PREF_TRAIN

    @property
    def pref_heldout_path(self) -> Path:
        return self.path / PREF_HELDOUT

    @property
    def n_sft_train(self) -> int:
        return self.counts["sft"]["train"]

    @property
    def n_sft_heldout(self) -> int:
        return self.counts["sft"]["heldout"]

    @property
    def n_kto_train(self) -> int:
        return self.counts["kto"]["train"]

    @property
    def n_pref_train(self) -> int:
        return self.counts["pref"]["train"]

    @property
    def n_pref_heldout(self) -> int:
        return self.counts["pref"]["heldout"]


@dataclass(frozen=True)
class Selection:
    rated: list[RatedExample]
    pairs: list[PreferencePair]  # arena votes only: correction pairs are derived from ``rated``
    previous_cutoff: datetime | None
    cutoff: datetime


# --- select ---------------------------------------------------------------------------------------------
def select(store, now: datetime) -> Selection:
    """Trainable rated answers and arena votes since the last published run's cutoff, up to ``now`` (exclusive).

    Answers held for review, set aside or discarded are left out (``feedback/store_review.py``), and so
    are answers the model did not write freely (the client wrote them, or forced them with a constraint
    the training row cannot show) unless their judgement is trusted: an untrusted rating of one is held
    for review when it is made, and this catches the rest (ratings from before the store knew origins).
    """
    since = _aware(store.last_cutoff())
    rated = store.trainable_examples(since=since, until=now)
    origins = store.answer_origins([r.message_id for r in rated if not r.trusted])
    # An id the store does not know (bench/retrain.py's synthetic source) has no origin to hold it by.
    rated = [r for r in rated if r.trusted or origins.get(r.message_id, MODEL) == MODEL]
    # Correction pairs come from ``rated`` (one place decides what a correction means); arena votes from here.
    pairs = [p for p in store.preference_pairs(since=since, until=now) if p.source == "arena"]
    return Selection(rated=rated, pairs=pairs, previous_cutoff=since, cutoff=now)


def scrub_selection(sel: Selection, counts: Counter, cache=None) -> Selection:
    """The selection with PII scrubbed from every prompt, answer and correction.

    ``cache`` (the store) holds texts scrubbed before by this scrubber version: a rebuild, or a window
    whose prompts share history with earlier ones, scrubs only texts it has not seen.
    """
    scrubber = CachedScrubber(cache)
    texts = [m.get("content") or "" for r in sel.rated for m in r.prompt]
    texts += [t for r in sel.rated for t in (r.answer, r.correction) if t]
    texts += [m.get("content") or "" for p in sel.pairs for m in p.prompt]
    texts += [t for p in sel.pairs for t in (p.chosen, p.rejected)]
    scrubber.prime(texts)
    rated = [dataclasses.replace(r, prompt=scrubber.messages(r.prompt, counts), answer=scrubber(r.answer, counts),
                                 correction=scrubber(r.correction, counts) if r.correction else r.correction)
             for r in sel.rated]
    pairs = [dataclasses.replace(p, prompt=scrubber.messages(p.prompt, counts), chosen=scrubber(p.chosen, counts),
                                 rejected=scrubber(p.rejected, counts))
             for p in sel.pairs]
    return dataclasses.replace(sel, rated=rated, pairs=pairs)


# --- views ----------------------------------------------------------------------------------------------
def build_views(rated: list[RatedExample], pairs: list[PreferencePair]) -> dict[str, list[Example]]:
    """The SFT, KTO and preference rows of a (scrubbed) selection, oldest first."""
    sft: list[Example] = []
    kto: list[Example] = []
    pref: list[Example] = []
    for r in sorted(rated, key=lambda r: (r.rated_at, r.message_id)):
        row = Example(prompt=r.prompt, completion=r.answer, conversation_id=r.conversation_id, user=r.user,
                      source_id=r.message_id, trusted=r.trusted)
        # normalise: a correction of only spaces or invisible (format) characters is no correction at all.
        wanted = normalise(r.correction) if r.correction else ""
        corrected = bool(wanted) and wanted != normalise(r.answer)
        if corrected:
            fixed = dataclasses.replace(row, completion=r.correction)
            sft.append(fixed)
            kto += [dataclasses.replace(fixed, label=True), dataclasses.replace(row, label=False)]
            pref.append(dataclasses.replace(fixed, rejected=r.answer))
        elif r.rating == "up" or wanted:  # a correction equal to the answer endorses it
            sft.append(row)
            kto.append(dataclasses.replace(row, label=True))
        elif r.rating == "down":
            kto.append(dataclasses.replace(row, label=False))
    epoch = datetime.min.replace(tzinfo=UTC)
    for p in sorted(pairs, key=lambda p: (_aware(p.created_at) or epoch, p.conversation_id)):
        pref.append(Example(prompt=p.prompt, completion=p.chosen, rejected=p.rejected,
                            conversation_id=p.conversation_id, user=p.user, source_id=f"arena:{p.conversation_id}"))
    return {"sft": sft, "kto": kto, "pref": pref}


# --- replay ---------------------------------------------------------------------------------------------
def complete_snapshots(datasets_dir: Path, up_to: datetime | None = None) -> list[Snapshot]:
    """Complete snapshots under ``datasets_dir`` (cutoff <= ``up_to`` when given), oldest first."""
    if not datasets_dir.is_dir():
        return []
    found = []
    for d in datasets_dir.iterdir():
        if d.name.startswith(".") or not (d / MANIFEST).is_file():
            continue  # temp dirs of interrupted builds
        snap = Snapshot.load(d)
        if up_to is None or snap.cutoff <= up_to:
            found.append(snap)
    return sorted(found, key=lambda s: (s.cutoff, s.id))


_SOURCE_ID_TAIL = re.compile(rb', "source_id": "([^"]*)"}$')


def _replay_pools(snapshots: list[Snapshot], file: str, exclude: Collection[str]) -> list[list[bytes]]:
    """Per snapshot, the lines of ``file`` it added (without source ids; a replayed copy belongs to the
    snapshot the row first appeared in), less discarded answers' rows.

    Rows whose source id is in ``exclude`` (answers an admin discarded after they trained, or that trained
    under a trust an admin revoked since) are left out, and so are their replayed copies in later snapshots:
    such a lesson does not come back.
    """
    owner: dict[bytes, int] = {}
    banned: set[bytes] = set()
    for i, snap in enumerate(snapshots):
        path = snap.path / file
        if not path.is_file():
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                # The row without its source id (written last): a replayed copy is the same row.
                tail = _SOURCE_ID_TAIL.search(line)
                key = _SOURCE_ID_TAIL.sub(b"}", line)
                if tail and tail.group(1).decode() in exclude:
                    banned.add(key)
                owner.setdefault(key, i)
    pools: list[list[bytes]] = [[] for _ in snapshots]
    for key, i in owner.items():
        if key not in banned:
            pools[i].append(key)
    return pools


def _replayed(line: bytes) -> Example:
    row = json.loads(line)
    chosen = row["chosen" if "chosen" in row else "completion"][0]["content"]
    rejected = row["rejected"][0]["content"] if "rejected" in row else None
    return Example(prompt=row["prompt"], completion=chosen, rejected=rejected, replay=True,
                   source_id="replay:" + hashlib.sha256(line).hexdigest()[:16])


def sample_replay(snapshots: list[Snapshot], n: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
    """``n`` distinct rows drawn with ``seed`` from the SFT train files of ``snapshots``, as evenly over the
    snapshots as their rows allow, none of an answer in ``exclude``.

    Even, not uniform over rows: each run's data is what one night's users taught, and a uniform draw gives
    the oldest (and largest) runs most of the sample. Measured on the four-cycle test, a uniform draw of 22
    rows in cycle 3 held 13 rows of the first lesson and 9 of the second, which fell from 90% to 60% of its
    held-out phrasings (class-balanced rehearsal; Chaudhry et al. 2019, "On Tiny Episodic Memories in
    Continual Learning"). Only the drawn lines are parsed; reading the files is a byte scan, so a large
    history costs little next to the new data's embeddings.
    """
    if n <= 0 or not snapshots:
        return []
    return [_replayed(line) for line in _draw_replay(_replay_pools(snapshots, SFT_TRAIN, exclude), n, seed)]


def _draw_replay(pools: list[list[bytes]], n: int, seed: int) -> list[bytes]:
    """``sample_replay``'s draw of ``n`` lines from per-snapshot ``pools`` (``_replay_pools``; left as they are)."""
    if n <= 0:
        return []
    rng = random.Random(seed)
    pools = [list(pool) for pool in pools if pool]
    for pool in pools:
        rng.shuffle(pool)
    return _even_draw(pools, n, rng)


def _even_draw(pools: list[list[bytes]], n: int, rng: random.Random) -> list[bytes]:
    """``n`` lines, one from each pool in turn (pools in a random order), each pool's lines in its own order."""
    pools = [pool for pool in pools if pool]
    rng.shuffle(pools)
    picked: list[bytes] = []
    depth = 0
    while len(picked) < n and any(depth < len(pool) for pool in pools):
        picked += [pool[depth] for pool in pools if depth < len(pool)][: n - len(picked)]
        depth += 1
    return picked


def lesson_probes(heldout_pools: list[list[bytes]], train_pools: list[list[bytes]], n: int, seed: int,
                  replayed: Collection[bytes] = ()) -> list[Example]:
    """Up to ``n`` SFT rows of the published snapshots before this run (their ``_replay_pools``, held-out and
    train), drawn as evenly over them as their rows allow: what the gate asks to see that earlier lessons are
    kept (``retrain.lesson_check``). Each snapshot's held-out rows come first: no adapter trained on them, so
    production giving their answer shows the lesson took, beyond the sentences it was trained on. Rows this
    run replays (``replayed``) are not asked: the candidate trains on them again, so they say nothing about
    what it forgot.
    """
    if n <= 0:
        return []
    rng = random.Random(seed + 1)  # not the replay's draw: the probes are not simply the rows replayed
    pools = []
    for heldout, train in zip(heldout_pools, train_pools, strict=True):
        heldout, train = list(heldout), list(train)
        rng.shuffle(heldout)
        rng.shuffle(train)
        pools.append(heldout + [line for line in train if line not in replayed])
    return [_replayed(line) for line in _even_draw(pools, n, rng)]


def taught_answers(snapshots: list[Snapshot], exclude: Collection[str] = ()) -> set[str]:
    """The chosen answers (normalised) of the earlier pairs in ``snapshots``: corrections and arena winners."""
    return {normalise(_replayed(line).completion) for pool in _replay_pools(snapshots, PREF_TRAIN, exclude)
            for line in pool}


def misplaced_lessons(pairs: list[Example], taught: set[str]) -> set[str]:
    """The source ids of the new ``pairs`` whose rejected answer is a taught answer: an earlier pair's chosen
    answer (``taught``) or another new pair's, whole or cut short (``retrain.clean.same_answer``).

    Such a pair does not say the answer is bad, only misplaced: a small model first spills a fresh lesson
    onto neighbouring questions, and the corrections of that spill are the next lesson. DPO on the pair
    (and KTO on its rejected half) lowers the taught answer everywhere, not only where it was misplaced:
    on the four-cycle test (bench/continual.py), each cycle unlearned the lesson before it, to 0-40% of its
    held-out phrasings. Also tried there and worse: replaying the earlier lesson's own pairs beside them
    (their rejected answers were the lesson before, and so on back), and a mirrored pair for each (the
    earlier answer chosen over the new one in the earlier lesson's context). SFT on the correction moves the
    answer out of the wrong place without that. A question whose answer changed (the meeting moved) is
    taught the same way: SFT on the new answer, the old answer no longer contrasted in DPO.
    """
    taught = taught | {normalise(p.completion) for p in pairs}
    out = set()
    for p in pairs:
        if p.rejected is None:
            continue
        rejected, chosen = normalise(p.rejected), normalise(p.completion)
        if any(same_answer(rejected, t) for t in taught if t != chosen):
            out.add(p.source_id)
    return out


# --- clean ----------------------------------------------------------------------------------------------
def clean_view(
    view: str,
    examples: list[Example],
    settings,
    embed: Callable,
    count_tokens: CountTokens | None,
    counts: dict,
    confirm: Callable | None = None,
) -> tuple[list[Example], list[Example]]:
    """Filter, dedup, cap and split one view; returns (train, heldout) and records counts after each stage."""
    c = counts[view]
    c["selected"] = len(examples)
    examples = drop_empty(examples)
    c["non_empty"] = len(examples)
    examples = drop_short(examples, settings.min_answer_chars)
    c["min_length"] = len(examples)
    examples = drop_long(examples, settings.max_example_tokens, count_tokens)
    c["max_length"] = len(examples)
    examples = exact_dedup(examples)
    c["exact_dedup"] = len(examples)
    # KTO ups and downs of the same text are both signal; only rows with one label compete.
    group = (lambda e: e.label) if view == "kto" else None
    # Trusted rows (an admin's, local mode's, approved ones) train as given, the product's rule: a lesson's
    # paraphrases with one taught answer are its point, and MiniLM at 0.95 called 27 of a 45-phrasing lesson
    # near-duplicates of the rest (bench/continual.py: the fourth lesson's held-out hits 0% with them dropped,
    # 100% kept; the four facts 80/30/20/0% against 70/10/0/100%, single noisy runs).
    # Exact duplicates still go above; only the others' rows compete here.
    kept = {id(e) for e in near_dedup([e for e in examples if not e.trusted], embed, settings.dedup_threshold,
                                      group=group, confirm=confirm,
                                      candidate_threshold=getattr(settings, "dedup_candidate_threshold", None))}
    examples = [e for e in examples if e.trusted or id(e) in kept]
    c["near_dedup"] = len(examples)
    examples = cap_user_share(examples, settings.max_user_share)
    c["user_cap"] = len(examples)
    examples = cap_untrusted(examples, settings.max_untrusted_user_rows, settings.max_untrusted_answer_rows)
    c["untrusted_cap"] = len(examples)
    train, heldout = split(examples, settings.heldout_fraction)
    c["train"], c["heldout"] = len(train), len(heldout)
    return train, heldout


# --- snapshot -------------------------------------------------------------------------------------------
def write_snapshot(datasets_dir: Path, snapshot_id: str, files: dict[str, list[Example]], manifest: dict) -> Path:
    """Write the data files, ``rows.json`` and manifest into a temp dir, then rename it into place; returns the final path."""
    datasets_dir.mkdir(parents=True, exist_ok=True)
    final = datasets_dir / snapshot_id
    tmp = datasets_dir / f".tmp-{snapshot_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        digest = hashlib.sha256()
        for name in DATA_FILES:
            data = "".join(json.dumps(e.record(), ensure_ascii=False) + "\n" for e in files.get(name, [])).encode()
            _write_durable(tmp / name, data)
            digest.update(name.encode() + b"\0" + data)
        _write_durable(tmp / ROWS, json.dumps({"message_ids": rated_answer_ids(files)}).encode())
        manifest = {**manifest, "snapshot_id": snapshot_id, "content_hash": digest.hexdigest()}
        _write_durable(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def rated_answer_ids(files: dict[str, list[Example]]) -> list[str]:
    """The rated answers (message ids) behind the new rows of ``files``; replayed rows and arena pairs aside."""
    return sorted({e.source_id for rows in files.values() for e in rows
                   if not e.replay and e.source_id and ":" not in e.source_id})


def snapshot_message_ids(path: str | Path) -> list[str]:
    """The rated answers a snapshot holds (``rows.json``); empty for snapshots written before it existed."""
    try:
        return json.loads((Path(path) / ROWS).read_text())["message_ids"]
    except FileNotFoundError:
        return []


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def build_training_set(
    store,
    settings,
    *,
    count_tokens: CountTokens | None = None,
    now: datetime | None = None,
    embedder=None,
    embedding_cache: EmbeddingCache | None = None,
) -> Snapshot:
    """Build, write and record the next training-set snapshot from ``store``'s new feedback.

    ``count_tokens`` counts tokens with the base tokenizer (default: a word-count estimate);
    ``embedder`` is a SentenceTransformer-like model (default: ``load_embedder(settings.embedding_model)``,
    loaded only if some text is not cached); the cascade's ``settings.dedup_confirm_model`` is loaded only if a
    proposed pair's text is not cached; ``embedding_cache`` defaults to ``store``.
    """
    now = _aware(now) or datetime.now(UTC)
    counts: dict = {"sft": {}, "kto": {}, "pref": {}}
    pii: Counter = Counter()

    sel = scrub_selection(select(store, now), pii, cache=store)
    views = build_views(sel.rated, sel.pairs)
    unpublished = store.unpublished_snapshot_ids()  # a rejected run's rows come back as new data instead
    earlier = [s for s in complete_snapshots(Path(settings.datasets_dir), up_to=sel.previous_cutoff)
               if s.id not in unpublished]
    # Sized by the new data, not the history, so training time stays flat as history grows.
    # Discarded answers, and answers trained under a trust an admin revoked: their rows are not replayed.
    unreplayable = store.unreplayable_message_ids()
    # Each earlier snapshot's own rows, read once: the replay sample and the gate's lesson probes draw from them.
    train_pools = _replay_pools(earlier, SFT_TRAIN, unreplayable)
    replayed = _draw_replay(train_pools, round(settings.replay_ratio * len(views["sft"])), settings.seed)
    replay = [_replayed(line) for line in replayed]
    counts["sft"]["replay"] = len(replay)
    # Replayed rows come first: they are already kept, so new near-duplicates of them are the ones dropped.
    views["sft"] = replay + views["sft"]
    # A new pair that rejects a taught answer says where that answer does not belong, not that it is bad:
    # it trains as SFT on the correction, not as a DPO or KTO contrast (``misplaced_lessons``).
    misplaced = misplaced_lessons(views["pref"], taught_answers(earlier, unreplayable))
    counts["pref"]["misplaced_lesson"] = len(misplaced)
    views["pref"] = [e for e in views["pref"] if e.source_id not in misplaced]
    views["kto"] = [e for e in views["kto"] if not (e.label is False and e.source_id in misplaced)]

    n_probes = getattr(settings, "gate_lesson_probes", 0)
    probes = lesson_probes(_replay_pools(earlier, SFT_HELDOUT, unreplayable) if n_probes else [], train_pools,
                           n_probes, settings.seed, replayed=set(replayed))
    counts["lesson_probes"] = len(probes)
    embed, confirm = near_dup_embedders(settings, embedding_cache or store, embedder)
    sft_train, sft_heldout = clean_view("sft", views["sft"], settings, embed, count_tokens, counts, confirm)
    kto_train, _ = clean_view("kto", views["kto"], settings, embed, count_tokens, counts, confirm)
    pref_train, pref_heldout = clean_view("pref", views["pref"], settings, embed, count_tokens, counts, confirm)
    counts["pii"] = dict(sorted(pii.items()))
    counts["embedded"] = embed.n_encoded
    counts["embedded_confirm"] = confirm.n_encoded if confirm else 0
    if confirm is not None and confirm.n_skipped:
        # A first build over a long history: the rest of the pairs went by the first stage alone.
        counts["confirm_budget_skipped"] = confirm.n_skipped
        log.warning("near-dup: %s's budget (%.0f s) spent; %d texts decided by %s alone", confirm.model_name,
                    confirm.budget_s, confirm.n_skipped, embed.model_name)

    snapshot_id = _snapshot_id(Path(settings.datasets_dir), now)
    manifest = {
        "cutoff": now.isoformat(),
        "previous_cutoff": sel.previous_cutoff.isoformat() if sel.previous_cutoff else None,
        "created_at": datetime.now(UTC).isoformat(),
        "counts": counts,
        "replay_sources": [s.id for s in earlier],
        "settings": {k: getattr(settings, k) for k in DATA_SETTINGS},
        "token_counter": "tokenizer" if count_tokens else "word estimate",
        "formats": {"sft": "conversational prompt-completion", "kto": "conversational unpaired preference",
                    "pref": "conversational preference"},
    }
    path = write_snapshot(Path(settings.datasets_dir), snapshot_id, {
        SFT_TRAIN: sft_train, SFT_HELDOUT: sft_heldout, KTO_TRAIN: kto_train,
        PREF_TRAIN: pref_train, PREF_HELDOUT: pref_heldout, LESSONS: probes,
    }, manifest)
    snapshot = Snapshot.load(path)
    if embedding_cache is None and hasattr(store, "prune_embeddings"):
        # The cache keeps what a later build can use: the texts of rows some snapshot holds (replay draws
        # from them); vectors of rows that were dropped or of another embedder go.
        store.prune_embeddings([m.model_name for m in (embed, confirm) if m], snapshot_text_keys(
            complete_snapshots(Path(settings.datasets_dir))))
    store.record_snapshot(snapshot.id, path, snapshot.cutoff, counts, snapshot.content_hash,
                          created_at=snapshot.created_at)
    log.info("snapshot %s: sft %d train / %d heldout (%d replayed), kto %d, pref %d / %d; %d texts embedded; "
             "pii replaced %s", snapshot.id, snapshot.n_sft_train, snapshot.n_sft_heldout, len(replay),
             snapshot.n_kto_train, snapshot.n_pref_train, snapshot.n_pref_heldout, embed.n_encoded,
             counts["pii"] or "none")
    return snapshot


def snapshot_text_keys(snapshots: list[Snapshot]) -> set[str]:
    """The embedding-cache keys (``text_key``) of the texts near-dup detection embeds for the rows of ``snapshots``:
    each row's dialogue without the system prompt, and its answer(s)."""
    keys: set[str] = set()
    for snap in snapshots:
        for name in DATA_FILES:
            path = snap.path / name
            if not path.is_file():
                continue
            for line in path.read_bytes().splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                answers = [row["completion"][0]["content"]] if "completion" in row else \
                    [row["chosen"][0]["content"], row["rejected"][0]["content"]]
                example = Example(prompt=row["prompt"], completion=answers[0],
                                  rejected=answers[1] if len(answers) > 1 else None)
                keys.add(text_key(_dialogue(example)))
                keys.add(text_key("\n".join(example.answers())))
    return keys


def _snapshot_id(datasets_dir: Path, now: datetime) -> str:
    base = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    snapshot_id, n = base, 1
    while (datasets_dir / snapshot_id).exists():
        n += 1
        snapshot_id = f"{base}-{n}"
    return snapshot_id


def _aware(dt: datetime | None) -> datetime | None:
    """UTC-aware datetimes throughout; a naive one is taken to be UTC (as the store writes them)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _parse_dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
