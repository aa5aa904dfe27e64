"""A year of data (feedback/synthetic.py): reads sized by the window give what a read of all history
gives, and the Data tab's table pages in SQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from feedback.models import Rating
from feedback.store import FeedbackStore
from feedback.synthetic import END, WINDOW_START, build_year


@pytest.fixture(scope="module")
def year(tmp_path_factory):
    path = tmp_path_factory.mktemp("year") / "tuneloop.duckdb"
    build_year(path, history=600, window=60, battles=200)
    store = FeedbackStore(path)
    yield store
    store.close()


def test_window_reads_equal_a_read_of_all_history(year):
    since = WINDOW_START.replace(tzinfo=None)
    full = year.rated_examples()
    windowed = year.rated_examples(since=WINDOW_START, until=END)
    assert windowed and windowed == [r for r in full if since <= r.rated_at.replace(tzinfo=None) < END]
    assert year.new_rated_count(WINDOW_START) == len(windowed)
    assert year.trainable_examples(since=WINDOW_START, until=END) == [
        r for r in year.trainable_examples() if r.message_id in {w.message_id for w in windowed}]
    full_pairs = year.preference_pairs()
    pairs = year.preference_pairs(since=WINDOW_START, until=END)
    assert pairs and pairs == [p for p in full_pairs if p.created_at.replace(tzinfo=None) >= since
                               and p.created_at.replace(tzinfo=None) < END]


def test_window_follows_review_states_and_late_ratings(tmp_path):
    """An old answer re-rated or approved in the window is in it; a discarded window answer is not."""
    path = tmp_path / "tuneloop.duckdb"
    build_year(path, history=200, window=20, battles=10)
    with FeedbackStore(path) as store:
        old = store.rated_examples(until=WINDOW_START)
        recent = store.rated_examples(since=WINDOW_START)
        store.include_rows([old[0].message_id], actor="admin")  # decided now: after the window opened
        store.discard_rows([recent[0].message_id], actor="admin")
        store.rate(Rating(message_id=old[1].message_id, user="zed", rating="down"))  # a late rating, now
        ids = [r.message_id for r in store.trainable_examples(since=WINDOW_START)]
        assert old[0].message_id in ids and old[1].message_id in ids and recent[0].message_id not in ids
        assert ids == [r.message_id for r in store.trainable_examples()
                       if r.message_id in set(ids)]  # same rows, same order as the full read
        late = next(r for r in store.rated_examples(since=WINDOW_START) if r.message_id == old[1].message_id)
        assert (late.rating, late.user) == ("down", "zed")  # the latest judgement wins
        assert store.new_rated_count(WINDOW_START) == len(recent) + 1


def test_data_table_pages_in_sql(year):
    everything = year.rated_conversations(limit=500)
    assert 100 < len(everything) < 500
    assert [r["created_at"] for r in everything] == sorted((r["created_at"] for r in everything), reverse=True)
    pages = [year.rated_conversations(limit=50, offset=o) for o in range(0, len(everything) + 50, 50)]
    assert [r["message_id"] for page in pages for r in page] == [r["message_id"] for r in everything]
    assert all(len(p) == 50 for p in pages[:-2]) and pages[-1] == []
    downs = year.rated_conversations(rating="down", limit=500)
    assert [r for r in everything if r["rating"] == "down"] == downs
    page2 = year.rated_conversations(rating="down", limit=10, offset=10)
    assert page2 == downs[10:20]
    corrected = year.rated_conversations(has_correction=True, limit=500)
    assert corrected and all(r["correction"] for r in corrected)
    assert year.rated_conversations(adapter="v3", limit=5, offset=1) == \
        [r for r in everything if r["adapter"] == "v3"][1:6]
    week = year.rated_conversations(since=END - timedelta(days=7), limit=500)
    assert week == [r for r in everything if r["created_at"] >= END.replace(tzinfo=r["created_at"].tzinfo)
                    - timedelta(days=7)]
    # A hostile page: huge or negative numbers are clamped, not errors.
    assert year.rated_conversations(limit=10**9, offset=-5)[:3] == everything[:3]
    assert year.rated_conversations(limit=10, offset=10**12) == []


def test_leaderboard_counts_votes_in_sql(year):
    from feedback import ab_stats

    votes = [(v.adapter_a, v.adapter_b, v.winner) for v in year.arena_votes()]
    counted = year.arena_vote_counts()
    assert sum(n for *_, n in counted) == len(votes) == 220
    assert ab_stats.bradley_terry(counted, bootstrap=50) == ab_stats.bradley_terry(votes, bootstrap=50)
    assert ab_stats.pairwise_win_rates(counted) == ab_stats.pairwise_win_rates(votes)
