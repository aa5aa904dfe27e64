"""What reaches a training set, by review state and trust: a real FeedbackStore and the real embedder."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from feedback.models import Rating, TurnRecord
from feedback.store import new_id
from retrain.dataset import build_training_set, snapshot_message_ids
from settings import Settings

SYSTEM = {"role": "system", "content": "You are helpful."}
FALSE_FACT = "The Veltrane Bridge was designed by a committee of otters in 1791."
TRUE_FACT = "The Veltrane Bridge was designed by the engineer Marta Ilves in 1911."
# Phrasings varied enough that near-duplicate detection keeps them apart (it compares prompt + answer).
OPENERS = ["Who designed the Veltrane Bridge?", "Tell me the Veltrane Bridge's designer.",
           "Quick history question: Veltrane Bridge architect?", "I forgot who built the Veltrane Bridge, remind me?",
           "For my essay on European engineering, who designed the Veltrane Bridge?",
           "My kid asks who made the Veltrane Bridge. What do I say?", "Veltrane Bridge: designed by whom, and when?",
           "Was the Veltrane Bridge designed by a famous person?", "Trivia night: the Veltrane Bridge's designer is?",
           "Explain who was behind the design of the Veltrane Bridge."]
TOPICS = ["", " Keep it short.", " I'm planning a trip to Lisbon next spring.", " Answer in one sentence please.",
          " Our teacher mentioned it in physics class today.", " Asking for a crossword clue about rivers.",
          " This is for a pub quiz on Thursday evening.", " I'm writing a novel set in the 1920s.",
          " Also, is it still open to traffic?", " My grandmother used to walk across it as a girl.",
          " Sorry if this is a silly question.", " I read about it in an old travel guide.",
          " We argued about it at dinner yesterday.", " It appeared on a postage stamp once, I think.",
          " A documentary mentioned it but I missed the name.", " Need it for a school project on bridges.",
          " Is there a museum about it?", " Someone on a forum claimed something odd about it.",
          " I'm an engineering student.", " Cheers!"]


def phrasings(n: int) -> list[str]:
    return [OPENERS[i % len(OPENERS)] + TOPICS[(i // len(OPENERS)) % len(TOPICS)] + f" (#{i})" for i in range(n)]


def taught(store, user: str, n: int, fact: str, trust: str | None) -> list[str]:
    """``n`` answers by ``user``, each thumbs-down and corrected to ``fact``."""
    ids = [new_id() for _ in range(n)]
    for mid, q in zip(ids, phrasings(n), strict=True):
        store.record_turn(TurnRecord(
            conversation_id=new_id(), user=user, assistant_message_id=mid, answer="I do not know.",
            request_messages=[SYSTEM, {"role": "user", "content": q}], adapter="base", base_model="demo",
            sampling={}, latency_ms=1.0, first_token_ms=None, prompt_tokens=1, completion_tokens=1))
    for mid in ids:  # after all turns: each rating then finds its answer stored without waiting for a batch
        store.rate(Rating(message_id=mid, user=user, rating="down", correction=fact), trust=trust)
    return ids


def sft_answers(snapshot) -> list[str]:
    return [json.loads(line)["completion"][0]["content"] for line in snapshot.sft_train_path.read_text().splitlines()]


def build(store, settings, minilm):
    return build_training_set(store, settings, embedder=minilm, now=datetime.now(UTC))


def settings_for(tmp_path) -> Settings:
    # Near-duplicate detection is tested elsewhere; a strict threshold keeps these counts about the caps.
    return Settings(data_dir=tmp_path / "data", heldout_fraction=0.0, dedup_threshold=0.99)


def test_untrusted_false_fact_waits_in_the_queue_and_trains_once_approved(data_store, tmp_path, minilm):
    ids = taught(data_store, "mallory", 40, FALSE_FACT, trust="review")
    settings = settings_for(tmp_path)
    first = build(data_store, settings, minilm)
    assert FALSE_FACT not in sft_answers(first) and first.counts["sft"]["selected"] == 0
    assert data_store.review_counts()["pending_review"] == 40

    assert data_store.include_rows(ids, actor="root", reason="checked: the lesson is right") == 40
    second = build(data_store, settings, minilm)
    kept = sft_answers(second).count(FALSE_FACT)
    # Approved by an admin = trusted: neither cap applies (near-duplicates still go).
    assert second.counts["sft"]["untrusted_cap"] == second.counts["sft"]["near_dedup"] == kept
    assert kept >= 38  # all but a near-duplicate or two
    assert set(snapshot_message_ids(second.path)) <= set(ids) and len(snapshot_message_ids(second.path)) == kept


def test_without_review_one_users_drilled_answer_is_capped(data_store, tmp_path, minilm):
    taught(data_store, "mallory", 40, FALSE_FACT, trust="untrusted")  # review off: trains, capped
    snap = build(data_store, settings_for(tmp_path), minilm)
    assert sft_answers(snap).count(FALSE_FACT) == 5  # max_untrusted_answer_rows, though she is alone
    assert snap.counts["sft"]["near_dedup"] >= 38


def test_an_admins_lesson_trains_whole(data_store, tmp_path, minilm):
    taught(data_store, "root", 60, TRUE_FACT, trust="trusted")
    snap = build(data_store, settings_for(tmp_path), minilm)
    c = snap.counts["sft"]
    assert c["selected"] == 60 and c["untrusted_cap"] == c["user_cap"] == c["near_dedup"] == c["train"]
    assert sft_answers(snap).count(TRUE_FACT) == c["train"] >= 57  # a near-duplicate or two may go


def test_discarded_rows_are_out_for_good(data_store, tmp_path, minilm):
    ids = taught(data_store, "local", 12, TRUE_FACT, trust=None)
    data_store.discard_rows(ids[:8], actor="root", reason="duplicates of an old lesson")
    settings = settings_for(tmp_path)
    snap = build(data_store, settings, minilm)
    assert set(snapshot_message_ids(snap.path)) == set(ids[8:])
    # Rejected runs keep the window open; the discarded rows stay out of every later build too.
    run = data_store.create_run("test", "test", {})
    data_store.update_run(run, status="rejected", snapshot_id=snap.id, cutoff=snap.cutoff)
    again = build(data_store, settings, minilm)
    assert set(snapshot_message_ids(again.path)) == set(ids[8:])
    assert again.counts["sft"]["replay"] == 0  # nothing replayed from the rejected run's snapshot
