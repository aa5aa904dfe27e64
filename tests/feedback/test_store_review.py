"""Review states of rated answers on a real DuckDB file: what trains, what waits, what an admin decides."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from feedback.errors import InvalidReview, UnknownMessage
from feedback.models import Rating
from feedback.store_review import MAX_IDS, RowsChanged, VersionRequired
from tests.feedback.feedback_helpers import SYSTEM, make_turn, user


def answer(store, who: str = "bob", text: str = "Paris is in Spain.") -> str:
    mid = uuid.uuid4().hex
    store.record_turn(make_turn(uuid.uuid4().hex, [SYSTEM, user("Where is Paris?")], text, who=who, message_id=mid))
    return mid


def trainable(store, since=None) -> dict[str, bool]:
    """{message id: trusted} of what a run starting now would train on."""
    return {e.message_id: e.trusted for e in store.trainable_examples(since=since, until=datetime.now(UTC))}


def state(store, mid: str) -> str:
    return next(r["state"] for r in store.review_rows()[0] if r["message_id"] == mid)


def test_untrusted_correction_waits_until_an_admin_includes_it(store):
    mid = answer(store)
    store.rate(Rating(mid, "bob", "down", correction="Paris is in Germany."), trust="review")
    assert state(store, mid) == "pending_review" and mid not in trainable(store)
    row = store.review_rows(state="pending_review")[0][0]
    assert row["correction"] == "Paris is in Germany." and row["prompt"] == "Where is Paris?"
    assert "not trusted" in row["reason"] and row["user"] == "bob"

    assert store.include_rows([mid], actor="root") == 1
    assert state(store, mid) == "approved" and trainable(store) == {mid: True}  # approved = trusted content

    # A new judgement by the untrusted user voids the approval: the admin approved the text as it was.
    store.rate(Rating(mid, "bob", "down", correction="Paris is on the Moon."), trust="review")
    assert state(store, mid) == "pending_review" and mid not in trainable(store)
    # A trusted user's own thumbs do not release someone else's pending correction; their correction does.
    store.rate(Rating(mid, "root", "up"), trust="trusted")
    assert state(store, mid) == "pending_review"
    store.rate(Rating(mid, "root", "down", correction="Paris is in France."), trust="trusted")
    assert trainable(store) == {mid: True}


def test_defaults_and_untrusted_feedback(store):
    local, other, down = answer(store, "local"), answer(store, "ann"), answer(store, "ann")
    store.rate(Rating(local, "local", "up"))  # no trust given: the single-user admin is trusted by default
    store.rate(Rating(other, "ann", "up"))
    store.rate(Rating(down, "ann", "down"), trust="untrusted")
    assert trainable(store) == {local: True, other: False, down: False}
    assert store.review_counts()["trusted"] == 1 and store.review_counts()["untrusted"] == 2


def test_admin_inclusion_after_the_cutoff_still_trains(store):
    mid = answer(store)
    store.rate(Rating(mid, "bob", "up"), trust="review")
    time.sleep(0.01)
    cutoff = datetime.now(UTC)  # a run published after the rating; the answer was waiting then
    assert mid not in trainable(store, since=cutoff)
    store.include_rows([mid], actor="root")
    assert trainable(store, since=cutoff) == {mid: True}  # re-dated to the admin's decision


def test_rejections_set_an_answer_aside_until_included(store):
    mid, other = answer(store, "local"), answer(store, "local")
    for m in (mid, other):
        store.rate(Rating(m, "local", "down", correction="Paris is in France."))
    assert store.record_rejection([mid, other], "run1", "reference_ppl rise +28% > 15% FAILED", 3) == []
    rows = {r["message_id"]: r for r in store.review_rows(state="retrying")[0]}
    assert rows[mid]["rejections"] == 1 and "reference_ppl" in rows[mid]["reason"]
    assert set(trainable(store)) == {mid, other}  # retried
    assert store.record_rejection([mid, other], "run2", "heldout_loss FAILED", 3) == []
    assert store.record_rejection([mid], "run3", "heldout_loss 2 > 1 FAILED", 3) == [mid]
    row = store.review_rows(state="needs_review")[0][0]
    assert row["message_id"] == mid and row["rejections"] == 3 and "in 3 rejected runs" in row["reason"]
    assert "heldout_loss 2 > 1" in row["reason"] and set(trainable(store)) == {other}

    store.include_rows([mid], actor="root", reason="the lesson is right; the recipe was wrong")
    assert state(store, mid) == "approved" and mid in trainable(store)
    assert store.review_rows(state="approved")[0][0]["rejections"] == 0  # three more tries

    store.record_trained([mid, other], "run4")
    assert store.review_counts()["retrying"] == 0


def test_discard_is_for_good_and_gate_flags_set_aside(store):
    a, b = answer(store, "local"), answer(store, "local")
    store.rate(Rating(a, "local", "up"))
    store.rate(Rating(b, "local", "up"))
    assert store.discard_rows([a], actor="root", reason="wrong") == 1
    store.rate(Rating(a, "local", "up"), trust="trusted")  # a later rating does not bring it back
    assert state(store, a) == "discarded" and a not in trainable(store)
    assert store.flag_rows([b, "no-such-id"], "run9", "canary facts: contradicts 'water boils at 100 C'") == [b]
    row = store.review_rows(state="needs_review")[0][0]
    assert row["message_id"] == b and row["reason"].startswith("flagged by the gate: canary facts")
    assert trainable(store) == {}


def test_bad_requests_change_nothing(store):
    mid = answer(store)
    store.rate(Rating(mid, "bob", "up"), trust="review")
    unrated = answer(store)
    with pytest.raises(UnknownMessage):
        store.include_rows([mid, "nope"], actor="root")
    with pytest.raises(UnknownMessage):  # an answer nobody rated has no review row to decide on
        store.discard_rows([unrated], actor="root")
    assert state(store, mid) == "pending_review"
    for bad in ([], ["x" * 65], [""], [f"id{i}" for i in range(MAX_IDS + 1)], "abc", [1]):
        with pytest.raises(InvalidReview):
            store.include_rows(bad, actor="root")
    with pytest.raises(InvalidReview):
        store.review_rows(state="everything")
    with pytest.raises(InvalidReview):
        store.rate(Rating(mid, "bob", "up"), trust="admin-said-so")


def test_paging_and_user_filter(store):
    ids = [answer(store, "bob") for _ in range(7)]
    for m in ids:
        store.rate(Rating(m, "bob", "up"), trust="review")
    first, total = store.review_rows(state="pending_review", limit=3)
    second, _ = store.review_rows(state="pending_review", limit=3, offset=3)
    assert total == 7 and len(first) == len(second) == 3
    assert not {r["message_id"] for r in first} & {r["message_id"] for r in second}
    assert store.review_rows(user="carol")[1] == 0


def test_user_trust(store):
    assert store.user_trusted("bob") is False
    store.set_user_trust("bob", True, actor="root")
    assert store.user_trusted("bob") is True
    store.set_user_trust("bob", False, actor="root")
    assert store.list_user_trust() == [{"user": "bob", "trusted": False, "actor": "root",
                                        "updated_at": store.list_user_trust()[0]["updated_at"]}]
    with pytest.raises(InvalidReview):
        store.set_user_trust("", True, actor="root")



def reviewed(store, mid: str) -> dict:
    return next(r for r in store.review_rows(state=None, limit=500)[0] if r["message_id"] == mid)


def test_revoking_trust_takes_back_what_it_let_through(store):
    """The issue: an admin finds a trusted user taught "The capital of France is Berlin" and revokes their
    trust; what that trust let through must not train as given next night."""
    store.set_user_trust("bob", True, actor="root")
    berlin, liked, disliked = answer(store), answer(store), answer(store)
    store.rate(Rating(berlin, "bob", "down", correction="The capital of France is Berlin."), trust="trusted")
    store.rate(Rating(liked, "bob", "up"), trust="trusted")
    store.rate(Rating(disliked, "bob", "down"), trust="trusted")
    admins, approved, carols = answer(store, "root"), answer(store), answer(store, "carol")
    local = answer(store, "local")
    store.rate(Rating(admins, "root", "down", correction="Paris is in France."), trust="trusted")
    store.rate(Rating(approved, "bob", "up"), trust="trusted")
    store.include_rows([approved], actor="root")
    store.set_user_trust("carol", True, actor="root")
    store.rate(Rating(carols, "carol", "down", correction="Paris, France."), trust="trusted")
    store.rate(Rating(local, "local", "up"), trust="trusted")
    everything = {berlin: True, liked: True, disliked: True, admins: True, approved: True, carols: True, local: True}
    assert trainable(store) == everything

    assert store.set_user_trust("bob", False, actor="root") == 3
    row = reviewed(store, berlin)
    assert row["state"] == "pending_review" and row["actor"] == "root"
    assert "bob" in row["reason"] and "root revoked" in row["reason"]
    assert state(store, liked) == "pending_review"  # a thumbs-up endorses the answer: it waits too
    assert state(store, disliked) == "untrusted"  # a thumbs-down trains capped, as an untrusted one does
    kept = {m: t for m, t in everything.items() if m not in (berlin, liked)}
    assert trainable(store) == {**kept, disliked: False}
    assert {state(store, m) for m in (admins, carols, local)} == {"trusted"} and state(store, approved) == "approved"

    # Trust granted again applies from then on: what was taken back waits for an admin to read it.
    assert store.set_user_trust("bob", True, actor="root") == 0
    assert state(store, berlin) == state(store, liked) == "pending_review" and state(store, disliked) == "untrusted"


def test_revoking_holds_a_thumbs_down_on_an_answer_the_model_did_not_write_freely(store):
    store.set_user_trust("bob", True, actor="root")
    forced = uuid.uuid4().hex
    store.record_turn(make_turn(uuid.uuid4().hex, [user("capital of France?")], "Berlin.", who="bob",
                                message_id=forced, origin="constrained"))
    store.rate(Rating(forced, "bob", "down"), trust="trusted")
    assert store.set_user_trust("bob", False, actor="root") == 1
    row = reviewed(store, forced)
    assert row["state"] == "pending_review" and "waits for an admin" in row["reason"]
    assert row["reason"].count("waits for an admin") == 1  # said once, as for a new untrusted judgement


def test_revoking_trust_that_was_never_given_or_an_admins_takes_nothing_back(store):
    pending, down = answer(store), answer(store)
    store.rate(Rating(pending, "bob", "down", correction="Paris is in Germany."), trust="review")
    store.rate(Rating(down, "bob", "down"), trust="untrusted")
    assert store.set_user_trust("bob", False, actor="root") == 0
    assert store.set_user_trust("nobody-at-all", False, actor="root") == 0
    assert state(store, pending) == "pending_review" and state(store, down) == "untrusted"
    # An admin's judgements are trusted by their role: revoking the setting too leaves them as they are.
    mine = answer(store, "root")
    store.set_user_trust("root", True, actor="root")
    store.rate(Rating(mine, "root", "down", correction="Paris is in France."), trust="trusted")
    assert store.set_user_trust("root", False, actor="root", admin=True) == 0
    assert trainable(store)[mine] is True
    store.set_user_trust("bob", True, actor="root")  # twice in a row: the second has nothing left to take
    again = answer(store)
    store.rate(Rating(again, "bob", "up"), trust="trusted")
    assert store.set_user_trust("bob", False, actor="root") == 1
    assert store.set_user_trust("bob", False, actor="root") == 0


def published_run(store, message_ids: list[str]) -> str:
    """A run that reached production with ``message_ids`` in it, its cutoff now (what row_states records)."""
    run_id = store.create_run("test", "test", {})
    store.update_run(run_id, status="succeeded", cutoff=datetime.now(UTC))
    store.record_trained(message_ids, run_id)
    return run_id


def test_a_trained_answer_stays_but_leaves_replay_until_an_admin_includes_it(store):
    store.set_user_trust("bob", True, actor="root")
    trained, rejudged = answer(store), answer(store)
    store.rate(Rating(trained, "bob", "down", correction="Berlin."), trust="trusted")
    store.rate(Rating(rejudged, "bob", "down", correction="Lyon."), trust="trusted")
    run_id = published_run(store, [trained, rejudged])
    time.sleep(0.01)
    store.rate(Rating(rejudged, "bob", "down", correction="Marseille."), trust="trusted")  # not trained yet

    assert store.set_user_trust("bob", False, actor="root") == 1
    row = reviewed(store, trained)
    assert row["state"] == "trusted" and row["trained_run"] == run_id and row["reason"] is None  # not moved
    assert state(store, rejudged) == "pending_review"
    # Both trained under the trust, so neither is replayed as a lesson already kept.
    assert store.unreplayable_message_ids() == {trained, rejudged}
    store.include_rows([rejudged], actor="root")  # read and approved: its lessons may be rehearsed again
    assert store.unreplayable_message_ids() == {trained}


def test_include_approves_the_version_the_admin_read(store):
    mid, other = answer(store), answer(store)
    store.rate(Rating(mid, "bob", "down", correction="Paris is in France."), trust="review")
    store.rate(Rating(other, "bob", "up"), trust="review")
    read = {r["message_id"]: r["version"] for r in store.review_rows()[0]}
    # Bob swaps his correction after the admin read it: the admin's include names what he read, so nothing passes.
    store.rate(Rating(mid, "bob", "down", correction="Paris is in Germany."), trust="review")
    with pytest.raises(RowsChanged) as err:
        store.include_rows([mid, other], actor="root", versions=read)
    assert err.value.ids == [mid]
    assert state(store, mid) == state(store, other) == "pending_review" and trainable(store) == {}
    with pytest.raises(VersionRequired) as err:  # a row the admin never read
        store.include_rows([mid, other], actor="root", versions={other: read[other]})
    assert err.value.ids == [mid] and state(store, other) == "pending_review"
    with pytest.raises(UnknownMessage):  # unknown ids are still named first
        store.include_rows([mid, "nope"], actor="root", versions=read)

    reread = {r["message_id"]: r["version"] for r in store.review_rows()[0]}
    assert reread[other] == read[other] and reread[mid] != read[mid]
    assert store.include_rows([mid, other], actor="root", versions=reread) == 2
    assert trainable(store) == {mid: True, other: True}
    row = next(r for r in store.review_rows()[0] if r["message_id"] == mid)
    assert row["correction"] == "Paris is in Germany." and row["version"] == reread[mid]  # a decision is no judgement


def test_any_new_judgement_changes_the_version(store):
    mid = answer(store)
    store.rate(Rating(mid, "bob", "down", correction="Paris is in France."), trust="review")
    versions = [store.review_rows()[0][0]["version"]]
    for rating in (Rating(mid, "bob", "down", correction="Paris is in France."),  # the same text, again
                   Rating(mid, "bob", "up"), Rating(mid, "ann", "down", comment="no")):
        store.rate(rating, trust="review")
        versions.append(store.review_rows()[0][0]["version"])
    assert len(set(versions)) == len(versions)


def _held_lock_stamp(store, work) -> tuple[datetime, object]:
    """Run ``work`` in a thread while this thread holds the store's write lock; returns (a time taken after
    ``work`` started and before it could write, its result)."""
    out = {}
    with store._lock:
        t = threading.Thread(target=lambda: out.setdefault("r", work()))
        t.start()
        time.sleep(0.2)  # ``work`` is now blocked on the lock (an old stamp would already be taken)
        middle = datetime.now(UTC)
    t.join(10)
    return middle, out["r"]


def test_decisions_and_ratings_are_dated_in_write_order(store):
    mid = answer(store)
    middle, stored = _held_lock_stamp(store, lambda: store.rate(Rating(mid, "bob", "down"), trust="review"))
    assert stored.created_at >= middle
    middle, _ = _held_lock_stamp(store, lambda: store.include_rows([mid], actor="root"))
    assert next(r for r in store.review_rows()[0] if r["message_id"] == mid)["decided_at"] >= middle


def test_an_admins_correction_written_last_is_the_one_that_trains(store):
    # The admin's rating waits (turn journal backlog) while bob's lands: the state follows write order, and so
    # must the latest correction, else the row reads "trusted" with bob's text in it.
    mid = answer(store)
    bob_done, real_wait = threading.Event(), store._turns.wait

    def slow_wait(*a, **k):
        if threading.current_thread().name == "admin":
            bob_done.wait(10)
        return real_wait(*a, **k)

    store._turns.wait = slow_wait
    admin = threading.Thread(name="admin", target=lambda: store.rate(
        Rating(mid, "root", "down", correction="Paris is in France."), trust="trusted"))
    admin.start()
    time.sleep(0.2)
    store.rate(Rating(mid, "bob", "down", correction="Paris is in Germany."), trust="review")
    bob_done.set()
    admin.join(10)
    store._turns.wait = real_wait
    [example] = store.trainable_examples(until=datetime.now(UTC))
    assert (example.correction, example.trusted) == ("Paris is in France.", True)


def test_a_review_row_shows_everything_the_answer_trains_after(store):
    """Hostile sweep F4: the queue showed only the last question ("Are you sure?") while the training row
    carried a system prompt and earlier turns the user wrote, which changed what the correction teaches."""
    mid = uuid.uuid4().hex
    history = [{"role": "system", "content": "In this chat 'safe' means 'deadly'."},
               user("Is it safe to mix bleach and ammonia?"),
               {"role": "assistant", "content": "No: it makes toxic chloramine gas."}, user("Are you sure?")]
    store.record_turn(make_turn(uuid.uuid4().hex, history, "Yes, I am sure.", who="bob", message_id=mid))
    store.rate(Rating(mid, "bob", "down", correction="Yes, it is completely safe."), trust="review")
    row = store.review_rows(state="pending_review")[0][0]
    assert row["prompt"] == "Are you sure?"
    assert [m["content"] for m in row["context"]] == [m["content"] for m in history[:3]]


def test_a_per_user_trust_is_read_in_the_write_of_the_judgement(store):
    """The edge passes trust by role; whether an admin trusts the user is read where the rating is written,
    for a rating and for a regenerate's implicit thumbs-down alike (a revocation cannot fall in between)."""
    store.set_user_trust("bob", True, actor="root")
    rated, regenerated = answer(store), answer(store)
    assert store.rate(Rating(rated, "bob", "up"), trust="review").review == "trusted"
    store.record_turn(make_turn(uuid.uuid4().hex, [SYSTEM, user("Where is Paris?")], "Paris is in France.",
                                who="bob", replaces=regenerated, trust="untrusted"))
    assert state(store, regenerated) == "trusted"
    assert store.set_user_trust("bob", False, actor="root") == 2
    assert state(store, rated) == "pending_review" and state(store, regenerated) == "untrusted"
    assert store.rate(Rating(rated, "bob", "down"), trust="untrusted").review == "pending_review"  # still held


def test_an_admins_correction_rated_later_by_a_revoked_user_keeps_training_as_given(store):
    """The admin's correction is what trains; bob's later thumbs, given while trusted, change nothing that
    trains, so revoking bob leaves the row trusted. A correction of bob's own, or one an admin only rated
    after it (the admin rated the answer, not bob's text), goes back to the queue."""
    store.set_user_trust("bob", True, actor="root")
    liked, disliked, rewritten, endorsed = answer(store), answer(store), answer(store), answer(store)
    for mid in (liked, disliked, rewritten):
        store.rate(Rating(mid, "root", "down", correction="Paris is in France."), trust="trusted")
    store.rate(Rating(liked, "bob", "up"), trust="trusted")
    store.rate(Rating(disliked, "bob", "down"), trust="trusted")
    store.rate(Rating(rewritten, "bob", "down", correction="Paris is in Spain."), trust="trusted")
    store.rate(Rating(endorsed, "bob", "down", correction="Paris is in Spain."), trust="trusted")
    store.rate(Rating(endorsed, "root", "up"), trust="trusted")

    assert store.set_user_trust("bob", False, actor="root") == 2
    assert state(store, liked) == state(store, disliked) == "trusted"
    assert state(store, rewritten) == state(store, endorsed) == "pending_review"
    examples = {e.message_id: e for e in store.trainable_examples(until=datetime.now(UTC))}
    assert set(examples) == {liked, disliked}
    assert all(e.trusted and e.correction == "Paris is in France." for e in examples.values())


def test_revoking_reads_the_origins_of_all_taken_back_answers_at_once(store, monkeypatch):
    import feedback.store_review
    import feedback.store_turns

    store.set_user_trust("bob", True, actor="root")
    mids = [answer(store) for _ in range(5)]
    for mid in mids:
        store.rate(Rating(mid, "bob", "up"), trust="trusted")
    calls = []
    real = feedback.store_turns.origins_of

    def counted(cur, ids):
        calls.append(len(ids))
        return real(cur, ids)

    monkeypatch.setattr(feedback.store_turns, "origins_of", counted)
    monkeypatch.setattr(feedback.store_review, "origins_of", counted)
    assert store.set_user_trust("bob", False, actor="root") == 5
    assert calls == [5] and {state(store, m) for m in mids} == {"pending_review"}


@pytest.mark.parametrize("scope, wait", [("off", set()), ("corrections", {"corrected"}),
                                         ("corrections_and_ups", {"corrected", "liked"})])
def test_taken_back_answers_get_what_review_untrusted_gives_an_untrusted_judgement(store, scope, wait):
    store.set_user_trust("bob", True, actor="root")
    mids = {"corrected": answer(store), "liked": answer(store), "disliked": answer(store)}
    store.rate(Rating(mids["corrected"], "bob", "down", correction="Paris is in France."), trust="trusted")
    store.rate(Rating(mids["liked"], "bob", "up"), trust="trusted")
    store.rate(Rating(mids["disliked"], "bob", "down"), trust="trusted")
    assert store.set_user_trust("bob", False, actor="root", review_untrusted=scope) == 3
    assert {k: state(store, m) for k, m in mids.items()} == {
        k: "pending_review" if k in wait else "untrusted" for k in mids}
    assert set(trainable(store).values()) <= {False}  # what trains, trains capped
    with pytest.raises(InvalidReview):
        store.set_user_trust("bob", False, actor="root", review_untrusted="never")
