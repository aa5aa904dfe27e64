"""Stop strings: the answer is cut exactly before the first one, and no part of one is ever streamed."""

import threading

import pytest

from serving.stop_strings import StopStrings
from serving.types import BASE, SamplingParams
from tests.serving.conftest import GREEDY, PROMPT


def feed_all(stops, chunks):
    s = StopStrings(stops)
    out = [s.feed(c) for c in chunks]
    return s, out


@pytest.mark.parametrize("chunks", [["Hello wor", "ld. END", " more"], ["Hello world.", " E", "N", "D more"],
                                    list("Hello world. END more")])
def test_cut_before_stop_whatever_the_chunking(chunks):
    s, out = feed_all(["END"], chunks)
    assert "".join(out) == "Hello world. "
    assert s.hit
    assert s.flush() == ""


def test_prefix_held_back_then_released_when_it_is_not_a_stop():
    s = StopStrings(["<end>"])
    assert s.feed("a <e") == "a "  # "<e" might start the stop string
    assert s.feed("n") == ""
    assert s.feed("x") == "<enx"  # it did not
    assert s.feed("b <en") == "b "
    assert s.flush() == "<en"  # the answer ended: what was held is plain text
    assert not s.hit


def test_earliest_of_several_stops_wins():
    _, out = feed_all(["bc", "abcd", "x"], ["zab", "cdx"])
    assert "".join(out) == "z"  # "abcd" starts first


def test_overlapping_prefix_of_stop():
    # "aab": the first "a" is released once "aa" shows it cannot start "ab"; the second starts the stop.
    _, out = feed_all(["ab"], ["a", "a", "b"])
    assert "".join(out) == "a"


def test_no_stops_streams_everything():
    _, out = feed_all([], ["a", "b"])
    assert out == ["a", "b"]


def _token_texts(backend, text_ids):
    return [backend.tokenizer.decode([t]) for t in text_ids]


def test_stop_spanning_tokens_in_a_real_answer(backend, solo_answers):
    """A stop string that starts inside one token and ends inside a later one."""
    full = solo_answers["demo-a"][0]
    ids = backend.tokenizer(full, add_special_tokens=False)["input_ids"]
    pieces = _token_texts(backend, ids)
    # Start two characters into the first token of 3+ characters past the beginning; span into the next.
    pos, start = 0, None
    for k, piece in enumerate(pieces):
        if k > 1 and len(piece) >= 3 and k + 1 < len(pieces):
            start = pos + 2
            stop = full[start:pos + len(piece) + 2]
            break
        pos += len(piece)
    assert start is not None
    start = full.index(stop)  # the first occurrence decides
    params = SamplingParams(max_tokens=GREEDY.max_tokens, temperature=0, stop=("never-there", stop))
    stream = backend.stream_chat([{"role": "user", "content": "Hello, how are you today?"}], "demo-a", params)
    deltas = list(stream)
    assert "".join(deltas) == full[:start] == stream.completion.text
    assert stream.completion.finish_reason == "stop"
    assert all(a.in_flight == 0 for a in backend.adapters.list())


def test_stop_that_never_completes_flushes_the_held_text(backend, solo_answers):
    full = solo_answers["demo-b"][0]
    params = SamplingParams(max_tokens=GREEDY.max_tokens, temperature=0, stop=(full[-2:] + "\u2603",))
    stream = backend.stream_chat(PROMPT, "demo-b", params)
    assert stream.text() == full
    assert stream.completion.finish_reason == "length"


def test_stop_rows_leave_without_disturbing_batch_mates(backend, solo_answers):
    full = solo_answers[BASE][0]
    stop = full[5:9]
    results = {}
    barrier = threading.Barrier(3)

    def run(key, params, adapter):
        barrier.wait()
        s = backend.stream_chat(PROMPT, adapter, params)
        results[key] = (s.text(), s.completion.finish_reason)

    threads = [threading.Thread(target=run, args=("stopped", SamplingParams(max_tokens=16, temperature=0,
                                                                          stop=(stop,)), BASE)),
               threading.Thread(target=run, args=("a", GREEDY, "demo-a")),
               threading.Thread(target=run, args=("base", GREEDY, BASE))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["stopped"] == (full[:full.index(stop)], "stop")
    assert results["a"] == (solo_answers["demo-a"][0], "length")
    assert results["base"] == (full, "length")
