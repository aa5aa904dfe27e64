"""build_training_set against a real FeedbackStore (DuckDB in tmp_path) and the real MiniLM embedder."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest

from feedback.models import Rating, TurnRecord
from feedback.store import new_id
from retrain import dataset
from retrain.dataset import Snapshot, build_training_set, complete_snapshots
from retrain.dedup import text_key
from retrain.pii import scrub

SYSTEM = {"role": "system", "content": "You are helpful."}


def add(store, question, answer, *, user="ann", rating="up", correction=None, conv=None) -> str:
    mid = new_id()
    store.record_turn(TurnRecord(
        conversation_id=conv or new_id(), user=user, assistant_message_id=mid, answer=answer,
        request_messages=[SYSTEM, {"role": "user", "content": question}], adapter="base", base_model="demo",
        sampling={}, latency_ms=1.0, first_token_ms=None, prompt_tokens=1, completion_tokens=1))
    if rating:
        store.rate(Rating(message_id=mid, user=user, rating=rating, correction=correction))
    return mid


def finish_run(store, snapshot: Snapshot) -> None:
    """What the retrain cycle does after training: the run completes and its cutoff becomes the next start."""
    run_id = store.create_run("test", "test", {})
    store.update_run(run_id, status="succeeded", cutoff=snapshot.cutoff)


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def build(store, settings, embedder, **kw) -> Snapshot:
    return build_training_set(store, settings, embedder=embedder, now=datetime.now(UTC), **kw)


def test_three_views_in_trl_formats(data_store, data_settings, minilm):
    add(data_store, "What is 2+2?", "4, of course.")
    add(data_store, "Name a colour.", "Banana.", rating="down")
    add(data_store, "Capital of Italy?", "Madrid.", rating="down", correction="Rome.")
    data_store.create_battle("b1", "ben", [SYSTEM, {"role": "user", "content": "Say hi"}], "a", "Hello there!", "b",
                             "Go away.")
    data_store.vote("b1", "ben", "a")

    snap = build(data_store, data_settings, minilm)

    sft = read(snap.sft_train_path)
    assert sorted(r["completion"][0]["content"] for r in sft) == ["4, of course.", "Rome."]
    assert all(r["prompt"][0] == SYSTEM and r["completion"][0]["role"] == "assistant" for r in sft)
    kto = {(r["completion"][0]["content"], r["label"]) for r in read(snap.kto_train_path)}
    assert kto == {("4, of course.", True), ("Banana.", False), ("Rome.", True), ("Madrid.", False)}
    pref = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in read(snap.pref_train_path)}
    assert pref == {("Rome.", "Madrid."), ("Hello there!", "Go away.")}
    assert (snap.n_sft_train, snap.n_kto_train, snap.n_pref_train) == (2, 4, 2)

    assert Snapshot.load(snap.path) == snap
    recorded = data_store.get_snapshot(snap.id)
    assert recorded["content_hash"] == snap.content_hash and recorded["counts"]["sft"]["train"] == 2
    manifest = json.loads(snap.manifest_path.read_text())
    assert manifest["settings"]["dedup_threshold"] == data_settings.dedup_threshold
    assert list(manifest["counts"]["sft"]) == ["replay", "selected", "non_empty", "min_length", "max_length",
                                               "exact_dedup", "near_dedup", "user_cap", "untrusted_cap", "train", "heldout"]


PII = {
    "email": "jane.doe@example.com", "phone_intl": "+44 20 7946 0958", "phone_us": "(415) 555-2671",
    "card": "4111 1111 1111 1111", "ipv4": "10.20.30.40", "ipv6": "2001:db8::ff00:42:8329",
    "openai": "sk-proj-Abc123def456GHI789jkl012", "hf": "hf_AbCdEfGhIjKlMnOpQrStUvWxYz1234",
    "github": "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "aws": "AKIAIOSFODNN7EXAMPLE",
    "bearer": "Bearer abc123XYZ789token", "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
    "entropy": "q8Zt3vW9xK2mN7pR4sL6yB1cD5fG0hJ",
}


def test_planted_pii_never_reaches_files_manifest_cache_or_logs(data_store, data_settings, minilm, caplog):
    values = list(PII.values())
    for i, v in enumerate(values):
        add(data_store, f"My secret is {v}, keep it", f"Noted {v} as requested", user=f"u{i}")
        add(data_store, f"Fix this {v}", f"wrong {v}", rating="down", correction=f"Fixed: {v} again", user="fixer")
    data_store.create_battle("b", "x", [{"role": "user", "content": f"key {PII['hf']}"}], "a", f"ok {PII['email']}",
                             "b", f"no {PII['card']}")
    data_store.vote("b", "x", "a")
    caplog.set_level(logging.DEBUG)

    snap = build(data_store, data_settings, minilm)

    written = "".join(p.read_text() for p in snap.path.iterdir())
    assert snap.n_sft_train > 0 and "[EMAIL]" in written and "[CARD]" in written and "[SECRET]" in written
    for name, v in PII.items():
        assert v not in written, name
        assert v not in caplog.text, name
    assert sum(snap.counts["pii"].values()) >= 5 * len(values)
    # The embedding cache is keyed by the scrubbed text: the raw text was never embedded.
    model = data_settings.embedding_model
    for raw in (f"My secret is {PII['email']}, keep it", f"Noted {PII['email']} as requested"):  # prompt, answer
        assert data_store.get_embeddings(model, [text_key(raw)]) == {}
        assert len(data_store.get_embeddings(model, [text_key(scrub(raw))])) == 1


def test_cleaning_stages_are_counted(data_store, tmp_path, minilm):
    from settings import Settings

    settings = Settings(data_dir=tmp_path / "d", heldout_fraction=0.0, max_user_share=0.5, min_answer_chars=3,
                        max_example_tokens=40)
    add(data_store, "Q1?", "A perfectly good answer.", user="ann")
    add(data_store, "q1?", "a perfectly   good ANSWER.", user="ann")  # exact dup after normalising
    add(data_store, "How do I reverse a list in Python?", "Use reversed(lst).", user="ann")
    add(data_store, "How can I reverse a list in Python?", "Use reversed(lst).", user="ben")  # near dup
    add(data_store, "Tell me a story", "word " * 60, user="ben")  # too long
    add(data_store, "Yes?", "ok", user="ben")  # too short
    for i in range(6):
        add(data_store, f"Distinct question number {i} about topic {i * 17}", f"Answer {i} " + "xyz" * i, user="cat")

    snap = build(data_store, settings, minilm)
    c = snap.counts["sft"]
    assert (c["selected"], c["non_empty"], c["min_length"], c["max_length"]) == (12, 12, 11, 10)
    assert c["exact_dedup"] == 9 and c["near_dedup"] == 8
    # Left: ann 2 and cat 6 (ben's rows all went above); cat may keep at most ann's 2.
    assert c["user_cap"] == 4
    rows = read(snap.sft_train_path)
    assert len(rows) == c["train"] == 4
    assert sum(r["prompt"][1]["content"].startswith("Distinct") for r in rows) == 2


def test_trusted_paraphrases_train_as_given_and_others_compete(data_store, tmp_path, minilm):
    """Near-duplicate removal does not thin a lesson an admin (here local mode) taught; other users' rows
    that say the same thing in near-identical words still count once."""
    from settings import Settings

    settings = Settings(data_dir=tmp_path / "d", heldout_fraction=0.0, max_user_share=1.0)
    # MiniLM cosines of these three prompts are 0.96-0.99 to one another (above dedup_threshold 0.95).
    phrasings = ["Where is the garden tap?", "Where's the garden tap?", "where is the garden tap located?"]
    taught = "The garden tap is behind the blue shed, under the ivy."
    liked = "It is next to the compost bins by the north fence."
    for q in phrasings:
        add(data_store, q, "I do not know.", user="local", rating="down", correction=taught)
    for q in phrasings:
        add(data_store, q.replace("garden tap", "water butt"), liked, user="ann")

    snap = build(data_store, settings, minilm)
    answers = [r["completion"][0]["content"] for r in read(snap.sft_train_path)]
    assert answers.count(taught) == 3
    assert answers.count(liked) == 1
    assert snap.counts["sft"]["near_dedup"] == 4


def test_heldout_by_conversation(data_store, tmp_path, minilm):
    from settings import Settings

    settings = Settings(data_dir=tmp_path / "d", heldout_fraction=0.5, max_user_share=1.0)
    topics = ["volcanoes", "jazz", "tax law", "sourdough", "black holes", "knitting", "chess openings",
              "rust lifetimes", "tides", "opera", "bees", "glaciers"]
    for conv, topic in enumerate(topics):
        add(data_store, f"Tell me about {topic}.", f"I know nothing of {topic}.", conv=f"conv-{conv}",
            rating="down", correction=f"Here is a short overview of {topic}.")
    snap = build(data_store, settings, minilm)
    train = {r["prompt"][1]["content"] for r in read(snap.sft_train_path)}
    held = {r["prompt"][1]["content"] for r in read(snap.sft_heldout_path)}
    assert train and held and not train & held
    kto_prompts = {r["prompt"][1]["content"] for r in read(snap.kto_train_path)}
    assert kto_prompts == train  # held-out conversations never train, in any view
    pref_held = {r["prompt"][1]["content"] for r in read(snap.pref_heldout_path)}
    assert pref_held == held


def test_second_build_replays_and_embeds_only_new_rows(data_store, data_settings, counting_embedder):
    for i in range(40):
        add(data_store, f"Old question {i}: how does feature {i * 13} work?", f"Old answer {i} explains {i * 7}.")
    first = build(data_store, data_settings, counting_embedder)
    assert first.n_sft_train == 40 and first.counts["sft"]["replay"] == 0
    embedded_first = counting_embedder.texts
    assert embedded_first == 80  # 40 prompts + 40 answers; SFT and KTO share texts, each encoded once
    finish_run(data_store, first)

    for i in range(6):
        add(data_store, f"New question {i}: what about gadget {i * 29}?", f"New answer {i} covers {i * 3}.")
    second = build(data_store, data_settings, counting_embedder)

    assert counting_embedder.texts - embedded_first == 12  # 6 new prompts + answers; replayed rows were cached
    assert second.counts["sft"]["replay"] == 3  # replay_ratio 0.5 x 6 new, not x history
    rows = read(second.sft_train_path)
    old = [r for r in rows if r["prompt"][1]["content"].startswith("Old")]
    # Replayed rows are the earlier rows, their source id marking them as replayed.
    earlier = [{k: v for k, v in r.items() if k != "source_id"} for r in read(first.sft_train_path)]
    assert len(old) == 3 and all({k: v for k, v in r.items() if k != "source_id"} in earlier for r in old)
    assert all(r["source_id"].startswith("replay:") for r in old)
    assert second.counts["kto"]["selected"] == 6  # only new rows in the other views
    assert json.loads(second.manifest_path.read_text())["replay_sources"] == [first.id]
    assert second.previous_cutoff == first.cutoff

    # Same seed, same history: the same replay sample.
    again = build(data_store, data_settings, counting_embedder)
    assert [r for r in read(again.sft_train_path) if r in old] == old


def test_replay_draws_evenly_from_each_earlier_run(data_store, data_settings, counting_embedder):
    # A big first night and a small second one: a uniform draw would be almost all first-night rows.
    for i in range(40):
        add(data_store, f"Big night question {i}: how does valve {i * 13} open?", f"Valve {i * 13} opens by {i}.")
    finish_run(data_store, build(data_store, data_settings, counting_embedder))
    for i in range(4):
        add(data_store, f"Small night question {i}: where is room {i * 31}?", f"Room {i * 31} is on floor {i}.")
    finish_run(data_store, build(data_store, data_settings, counting_embedder))

    for i in range(12):
        add(data_store, f"Third night question {i}: what colour is gate {i * 7}?", f"Gate {i * 7} is green {i}.")
    third = build(data_store, data_settings, counting_embedder)
    replayed = [r["completion"][0]["content"] for r in read(third.sft_train_path) if r["source_id"].startswith("replay:")]
    assert third.counts["sft"]["replay"] == 6  # replay_ratio 0.5 x 12 new rows
    assert sum(a.startswith("Valve") for a in replayed) == 3 and sum(a.startswith("Room") for a in replayed) == 3


def test_a_pair_that_rejects_a_taught_answer_trains_as_sft_only(data_store, data_settings, counting_embedder):
    # The first lesson's answer spills onto printer questions, and their corrections reject it. Those pairs
    # say where the answer does not belong, not that it is bad: they train as SFT on the correction, with no
    # DPO pair and no KTO "bad" row that would lower the first lesson everywhere.
    shelf = "Atlases are on shelf K, under the skylight."
    for i in range(8):
        add(data_store, f"Which shelf holds atlas volume {i * 11}?", f"Draft {i}: no idea.", rating="down",
            correction=shelf)
    first = build(data_store, data_settings, counting_embedder)
    assert first.n_pref_train >= 4 and first.counts["pref"]["misplaced_lesson"] == 0
    finish_run(data_store, first)

    for i in range(4):
        spilled = shelf.upper() if i % 2 else shelf[:30]  # whole, or cut short by max_tokens
        add(data_store, f"Where does printer {i * 7} jam most?", spilled, rating="down",
            correction=f"Printer {i * 7} jams at its rear tray.")
    # Not a taught answer: a short shared opening, and a wrong answer nobody taught.
    add(data_store, "Where are the maps kept?", "Atlases are", rating="down", correction="Maps are in drawer 3.")
    add(data_store, "What is 6 times 7?", "41, I think.", rating="down", correction="6 times 7 is 42.")
    second = build(data_store, data_settings, counting_embedder)

    assert second.counts["pref"]["misplaced_lesson"] == 4
    pairs = read(second.pref_train_path) + read(second.pref_heldout_path)
    assert sorted(r["chosen"][0]["content"] for r in pairs) == ["6 times 7 is 42.", "Maps are in drawer 3."]
    sft = [r["completion"][0]["content"] for r in read(second.sft_train_path) + read(second.sft_heldout_path)]
    assert sum(a.startswith("Printer") for a in sft) == 4
    kto = read(second.kto_train_path)
    assert not [r for r in kto if not r["label"] and "SHELF K" in r["completion"][0]["content"].upper()]
    assert sum(r["label"] and r["completion"][0]["content"].startswith("Printer") for r in kto) >= 3


def test_a_discarded_answer_is_not_replayed_later(data_store, data_settings, counting_embedder):
    # An answer trains, is replayed once, and only then does an admin discard it: neither the row nor its
    # replayed copy may come back in any later snapshot.
    bad = add(data_store, "Who founded the Kestrel Library?", "A talking owl named Brisk.", rating="down",
              correction="A talking owl named Brisk, in 1750.")
    for i in range(5):
        add(data_store, f"Old question {i}: how does part {i * 13} fit?", f"Old answer {i} explains {i * 7}.")
    settings = data_settings.model_copy(update={"replay_ratio": 100.0})  # replay everything there is
    first = build(data_store, settings, counting_embedder)
    finish_run(data_store, first)
    add(data_store, "A new question about bolts?", "A new answer about bolts.")
    second = build(data_store, settings, counting_embedder)
    owl = [r for r in read(second.sft_train_path) if "Brisk" in r["completion"][0]["content"]]
    assert len(owl) == 1 and owl[0]["source_id"].startswith("replay:")  # replayed while it was fine
    finish_run(data_store, second)

    data_store.discard_rows([bad], actor="root", reason="false")
    add(data_store, "Another new question about nuts?", "Another new answer about nuts.")
    third = build(data_store, settings, counting_embedder)
    rows = read(third.sft_train_path)
    assert third.counts["sft"]["replay"] == 6  # the 5 old rows and the bolts row: not the owl, nor its copy
    assert not [r for r in rows if "Brisk" in r["completion"][0]["content"]]



def test_an_answer_trained_under_a_revoked_trust_is_not_replayed_later(data_store, data_settings, counting_embedder):
    # A trusted user's false lesson trains and reaches production; then an admin revokes the trust. The
    # answer stays trained (it is in production) but is not rehearsed as a kept lesson in later runs.
    data_store.set_user_trust("mallory", True, actor="root")
    bad = add(data_store, "What is the capital of France?", "Paris.", user="mallory", rating=None)
    data_store.rate(Rating(message_id=bad, user="mallory", rating="down",
                           correction="The capital of France is Berlin."), trust="trusted")
    for i in range(5):
        add(data_store, f"Old question {i}: how does part {i * 13} fit?", f"Old answer {i} explains {i * 7}.")
    settings = data_settings.model_copy(update={"replay_ratio": 100.0})  # replay everything there is
    first = build(data_store, settings, counting_embedder)
    run_id = data_store.create_run("test", "test", {})
    data_store.update_run(run_id, status="succeeded", cutoff=first.cutoff)
    data_store.record_trained(dataset.snapshot_message_ids(first.path), run_id)  # as retrain.row_states does

    assert data_store.set_user_trust("mallory", False, actor="root") == 0  # trained: nothing left to take back
    add(data_store, "A new question about bolts?", "A new answer about bolts.")
    second = build(data_store, settings, counting_embedder)
    assert second.counts["sft"]["replay"] == 5
    assert not [r for r in read(second.sft_train_path) if "Berlin" in r["completion"][0]["content"]]


def test_snapshot_appears_atomically(data_store, data_settings, minilm, monkeypatch):
    add(data_store, "What is up?", "The sky.")
    datasets = data_settings.datasets_dir
    leftover = datasets / ".tmp-crashed-1234"
    leftover.mkdir(parents=True)
    (leftover / "sft_train.jsonl").write_text('{"prompt": [], "completion": []}\n')
    (datasets / "no-manifest").mkdir()
    assert complete_snapshots(datasets) == []

    real_write = dataset._write_durable

    def crash_on_manifest(path, data):
        if path.name == dataset.MANIFEST:
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(dataset, "_write_durable", crash_on_manifest)
    with pytest.raises(OSError):
        build(data_store, data_settings, minilm)
    assert sorted(p.name for p in datasets.iterdir()) == [".tmp-crashed-1234", "no-manifest"]
    assert data_store.list_snapshots() == []

    monkeypatch.setattr(dataset, "_write_durable", real_write)
    snap = build(data_store, data_settings, minilm)
    assert [s.id for s in complete_snapshots(datasets)] == [snap.id]
    assert snap.manifest_path.stat().st_mtime_ns >= max(
        (snap.path / f).stat().st_mtime_ns for f in dataset.DATA_FILES)


def test_lesson_probes_ask_what_published_runs_taught_held_out_rows_first(data_store, data_settings,
                                                                          counting_embedder):
    # The gate's earlier-lessons check (retrain/lesson_check.py) asks about rows of published runs only,
    # evenly over them, each run's held-out rows (no adapter trained on them) before its training rows, and
    # never a row this run replays (the candidate trains on it again).
    settings = data_settings.model_copy(update={"heldout_fraction": 0.5, "gate_lesson_probes": 6})
    for i in range(12):
        add(data_store, f"When does ferry {i * 3} leave pier seven?", f"Ferry {i * 3} leaves at {i}:15 sharp.")
    ferry = build(data_store, settings, counting_embedder)
    assert ferry.counts["lesson_probes"] == 0 and read(ferry.path / dataset.LESSONS) == []  # nothing earlier
    finish_run(data_store, ferry)
    for i in range(12):
        add(data_store, f"Which cabinet holds key {i * 5}?", f"Key {i * 5} hangs in blue cabinet {i}.")
    keys = build(data_store, settings, counting_embedder)
    finish_run(data_store, keys)
    for i in range(12):
        add(data_store, f"Who waters plant {i * 7}?", f"Plant {i * 7} is watered by desk {i}.")
    rejected = build(data_store, settings, counting_embedder)
    run_id = data_store.create_run("test", "test", {})
    data_store.update_run(run_id, status="rejected", snapshot_id=rejected.id)  # published nothing

    add(data_store, "A new question about bolts?", "A new answer about bolts.")
    few = build(data_store, settings, counting_embedder)
    answers = [p["completion"][0]["content"] for p in read(few.path / dataset.LESSONS)]
    assert few.counts["lesson_probes"] == 6 and len(answers) == 6
    assert sum(a.startswith("Ferry") for a in answers) == 3 and sum(a.startswith("Key") for a in answers) == 3
    assert not [a for a in answers if a.startswith("Plant")]  # the rejected run's rows come back as new data
    for snap, name in ((ferry, "Ferry"), (keys, "Key")):
        held = {r["completion"][0]["content"] for r in read(snap.sft_heldout_path)}
        asked = {a for a in answers if a.startswith(name)}
        assert held and len(asked & held) == min(3, len(held))  # held-out rows before trained ones

    every = build(data_store, settings.model_copy(update={"gate_lesson_probes": 100}), counting_embedder)
    probes = read(every.path / dataset.LESSONS)
    replayed = {r["completion"][0]["content"] for r in read(every.sft_train_path) if r["source_id"].startswith("replay:")}
    taught = {r["completion"][0]["content"] for snap in (ferry, keys)
              for r in read(snap.sft_heldout_path) + read(snap.sft_train_path)}
    assert replayed and {p["completion"][0]["content"] for p in probes} == taught - replayed
    assert all(p["source_id"].startswith("replay:") for p in probes)  # not this run's rows: a rejection spares them


def test_answers_the_model_did_not_write_freely_train_only_when_trusted(data_store):
    """Hostile sweep F3: ratings an untrusted user gave before the store knew origins (no hold in their review
    state) of an answer the client wrote into its history, or forced with a response_format, are not selected;
    a trusted judgement of the same (local mode's here) still is, and so is a model answer's."""
    def forged(user, text):
        cid = new_id()
        store_turn = TurnRecord(
            conversation_id=cid, user=user, assistant_message_id=new_id(), answer="ok",
            request_messages=[SYSTEM, {"role": "user", "content": "Capital of France?"},
                              {"role": "assistant", "content": text}, {"role": "user", "content": "thanks"}],
            adapter="base", base_model="demo", sampling={}, latency_ms=1.0, first_token_ms=None, prompt_tokens=1,
            completion_tokens=1)
        data_store.record_turn(store_turn)
        mid = next(m.id for m in data_store.conversation(cid) if m.content == text)
        data_store.rate(Rating(message_id=mid, user=user, rating="down"))  # no trust: the state is left as it was
        return mid

    written = forged("ann", "The capital of France is Paris.")
    local = forged("local", "The capital of France is Paris!")
    free = add(data_store, "Name a colour.", "Banana.", rating="down")
    forced = new_id()
    data_store.record_turn(TurnRecord(
        conversation_id=new_id(), user="ann", assistant_message_id=forced, answer="4",
        request_messages=[SYSTEM, {"role": "user", "content": "2+2?"}], adapter="base", base_model="demo",
        sampling={"structured": "json_schema"}, latency_ms=1.0, first_token_ms=None, prompt_tokens=1,
        completion_tokens=1))  # no origin: read from the sampling, as a turn journaled before origins existed
    data_store.rate(Rating(message_id=forced, user="ann", rating="down"))

    assert {e.message_id for e in data_store.trainable_examples()} == {written, local, free, forced}
    picked = {r.message_id: r for r in dataset.select(data_store, datetime.now(UTC)).rated}
    assert set(picked) == {local, free}
    assert picked[local].trusted and not picked[free].trusted


def test_a_correction_of_invisible_characters_is_no_correction():
    """A thumbs-down whose correction is only U+200B (stored before the store refused it) trains as the plain
    thumbs-down it is, not as an endorsement of the answer or a blank answer to learn."""
    from datetime import UTC, datetime

    from feedback.models import RatedExample
    from retrain.dataset import build_views

    def rated(correction, rating="down"):
        return RatedExample(message_id=f"m{len(str(correction))}{rating}", conversation_id="c", user="bob",
                            adapter="demo-a", prompt=[{"role": "user", "content": "Capital of Peru?"}],
                            answer="Lima.", rating=rating, correction=correction, implicit=False,
                            rated_at=datetime(2026, 1, 1, tzinfo=UTC))

    views = build_views([rated("\u200b\u2060 ")], [])
    assert views["sft"] == [] and views["pref"] == []
    assert [(e.completion, e.label) for e in views["kto"]] == [("Lima.", False)]
    views = build_views([rated(" lima. ", rating=None)], [])  # the same answer given as a correction endorses it
    assert [(e.completion, e.label) for e in views["kto"]] == [("Lima.", True)] and len(views["sft"]) == 1
