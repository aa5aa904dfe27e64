"""export(): OpenAI JSONL that `datasets` loads, with corrections substituted; Parquet one row per message."""

from __future__ import annotations

import json
import os
from datetime import date, timedelta

import pyarrow.parquet as pq
import pytest
from feedback_helpers import SYSTEM, assistant, make_turn, user

from feedback.export import export
from feedback.models import Rating


@pytest.fixture
def filled(store):
    # c1: corrected answer, then a second turn; c2: unrated; c3: regenerated then rated down without a fix.
    store.record_turn(make_turn("c1", [SYSTEM, user("who are you?")], "a bot", message_id="c1a1"))
    store.rate(Rating(message_id="c1a1", user="alice", rating="down", correction="I am Tuneloop."))
    store.record_turn(make_turn("c1", [SYSTEM, user("who are you?"), assistant("a bot"), user("thanks")], "welcome",
                                message_id="c1a2"))
    store.record_turn(make_turn("c2", [user("2+2?")], "4", message_id="c2a1"))
    store.record_turn(make_turn("c3", [user("joke")], "no", message_id="c3a1"))
    store.record_turn(make_turn("c3", [user("joke")], "a pun", message_id="c3a2", replaces="c3a1"))
    store.record_turn(make_turn("c3", [user("joke"), assistant("a pun"), user("another")], "meh", message_id="c3a3"))
    store.rate(Rating(message_id="c3a3", user="bob", rating="down"))
    return store


def test_openai_jsonl_round_trip_through_datasets(filled, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "export.jsonl"
    assert export(filled, out, "openai") == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"messages"} and all(set(m) == {"role", "content"} for m in r["messages"]) for r in rows)
    dataset = load_dataset("json", data_files=str(out), split="train")
    by_first_user = {next(m["content"] for m in r["messages"] if m["role"] == "user"): r["messages"] for r in dataset}
    assert by_first_user["who are you?"] == [SYSTEM, user("who are you?"), assistant("I am Tuneloop."), user("thanks"),
                                             assistant("welcome")]
    assert by_first_user["2+2?"] == [user("2+2?"), assistant("4")]
    # Superseded "no" dropped; cut before the thumbs-down "meh" (trailing user message trimmed too).
    assert by_first_user["joke"] == [user("joke"), assistant("a pun")]
    assert not list(tmp_path.glob(".*.tmp"))


def test_rated_only_and_since(filled, tmp_path):
    out = tmp_path / "rated.jsonl"
    assert export(filled, out, "openai", rated_only=True) == 2  # c1 and c3 (c3 has the implicit and explicit downs)
    assert export(filled, out, "openai", since=date.today() + timedelta(days=2)) == 0
    assert out.read_text() == ""


def test_parquet_one_row_per_message(filled, tmp_path):
    out = tmp_path / "export.parquet"
    assert export(filled, out, "parquet") == 12
    table = pq.read_table(out).to_pylist()
    assert len(table) == 12
    fixed = next(r for r in table if r["message_id"] == "c1a1")
    assert (fixed["rating"], fixed["correction"], fixed["downs"], fixed["corrected_by"]) == (
        "down", "I am Tuneloop.", 1, "alice")
    regenerated = next(r for r in table if r["message_id"] == "c3a1")
    assert regenerated["superseded"] and regenerated["implicit"]


def test_unknown_format_is_refused(store, tmp_path):
    with pytest.raises(ValueError):
        export(store, tmp_path / "x", "csv")


def test_export_in_small_batches_is_the_same_file(filled, tmp_path, monkeypatch):
    """The export streams ranges of conversations in record batches; a conversation split across
    batches comes out whole, and the files equal a one-batch export byte for byte."""
    import feedback.store_ratings as store_ratings

    whole = {fmt: tmp_path / f"whole.{fmt}" for fmt in ("openai", "parquet")}
    for fmt, path in whole.items():
        export(filled, path, fmt)
    monkeypatch.setattr(store_ratings, "EXPORT_CHUNK_MESSAGES", 2)
    monkeypatch.setattr(store_ratings, "EXPORT_BATCH_ROWS", 1)
    assert len(list(filled.export_batches())) == 12  # one row per batch
    small = tmp_path / "small.openai"
    assert export(filled, small, "openai") == 3
    assert small.read_bytes() == whole["openai"].read_bytes()
    export(filled, tmp_path / "small.parquet", "parquet")
    assert pq.read_table(tmp_path / "small.parquet").equals(pq.read_table(whole["parquet"]))


@pytest.mark.parametrize("fmt", ["openai", "parquet"])
def test_a_file_at_the_target_is_replaced_only_when_asked(filled, tmp_path, fmt):
    """Without ``replace`` a file at ``out`` (one created after the CLI checked, say) stays as it was and no
    temp file is left; a dangling symlink there is not written through either."""
    folder = tmp_path / "out"  # the store lives in tmp_path
    folder.mkdir()
    out = folder / "theirs"
    out.write_text("theirs")
    with pytest.raises(FileExistsError):
        export(filled, out, fmt, replace=False)
    assert out.read_text() == "theirs" and os.listdir(folder) == ["theirs"]
    link = folder / "link"
    link.symlink_to(folder / "elsewhere")
    with pytest.raises(FileExistsError):
        export(filled, link, fmt, replace=False)
    assert sorted(os.listdir(folder)) == ["link", "theirs"]
    assert export(filled, out, fmt) > 0 and out.read_bytes() != b"theirs"
    assert export(filled, folder / "new", fmt, replace=False) > 0
    assert sorted(os.listdir(folder)) == ["link", "new", "theirs"]


def test_without_hard_links_a_new_target_is_created_exclusively(filled, tmp_path, monkeypatch):
    """On a file system without hard links (FAT, some shares) the no-replace export still lands, and still
    never replaces a file that is there."""
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    folder = tmp_path / "out"  # the store lives in tmp_path
    folder.mkdir()
    out = folder / "new.jsonl"
    assert export(filled, out, "openai", replace=False) == 3
    assert len(out.read_text().splitlines()) == 3
    out.write_text("theirs")
    with pytest.raises(FileExistsError):
        export(filled, out, "openai", replace=False)
    assert out.read_text() == "theirs" and os.listdir(folder) == ["new.jsonl"]
