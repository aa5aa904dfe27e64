"""Many threads writing at once lose nothing; an acknowledged write survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from feedback_helpers import assistant, make_turn, user

from feedback.models import Rating
from feedback.store import FeedbackStore

ROOT = Path(__file__).resolve().parents[2]


def test_sixteen_threads_record_and_rate_without_losing_anything(store):
    threads, turns_each = 16, 12
    barrier = threading.Barrier(threads)

    def work(t: int) -> list[str]:
        barrier.wait()  # all threads start writing together
        ids = []
        history = [user(f"t{t} q0")]
        for i in range(turns_each):
            message_id = f"t{t}-m{i}"
            store.record_turn(make_turn(f"conv-{t}", history, f"t{t} a{i}", who=f"user{t}", message_id=message_id))
            store.rate(Rating(message_id=message_id, user=f"user{t}", rating="up" if i % 2 else "down"))
            store.rate(Rating(message_id=message_id, user="shared-rater", rating="up"))
            assert store.get_message(message_id) is not None  # reads interleave with the writes
            history = [*history, assistant(f"t{t} a{i}"), user(f"t{t} q{i + 1}")]
            ids.append(message_id)
        return ids

    with ThreadPoolExecutor(threads) as pool:
        ids = [i for batch in pool.map(work, range(threads)) for i in batch]
    n = threads * turns_each
    totals = store.stats()["totals"]
    assert len(set(ids)) == n
    assert totals["assistant_messages"] == n and totals["messages"] == 2 * n
    assert (totals["up"], totals["down"], totals["rated_messages"]) == (n + n // 2, n // 2, n)
    for t in range(threads):
        assert len(store.conversation(f"conv-{t}")) == 2 * turns_each


WRITER = textwrap.dedent("""
    import sys, time
    from feedback.models import Rating, TurnRecord
    from feedback.store import FeedbackStore

    store = FeedbackStore(sys.argv[1])
    for i in range(1000):
        mid = f"m{i}"
        store.record_turn(TurnRecord(conversation_id=f"c{i}", user="u", request_messages=[{"role": "user", "content": "q"}],
                                     assistant_message_id=mid, answer="a", adapter="demo-a", base_model="tiny",
                                     sampling={}, latency_ms=1.0, first_token_ms=None, prompt_tokens=1,
                                     completion_tokens=1))
        store.rate(Rating(message_id=mid, user="u", rating="up" if i % 2 else "down"))
        print("acked", mid, flush=True)
    time.sleep(60)  # never closes: the parent kills it
""")


def test_acknowledged_writes_survive_kill_9(tmp_path):
    db = tmp_path / "feedback.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(line.split()[1])
            if len(acked) == 25:
                break
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-write, without close() or a checkpoint
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with FeedbackStore(db) as store:
        found = {e.message_id: e.rating for e in store.rated_examples()}
    assert set(acked) <= set(found)
    assert all(found[m] == ("up" if int(m[1:]) % 2 else "down") for m in acked)
