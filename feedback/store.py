"""FeedbackStore: the one owner of the DuckDB file; every SQL statement of Tuneloop lives in feedback/.

The facade is assembled from one class per concern, each in its own module, all sharing the
connection, write lock and turn journal of ``StoreCore`` (``feedback/store_core.py`` says how reads,
writes and durability work):

- ``store_turns``: conversations and messages (chat turns in, messages out)
- ``store_ratings``: ratings and corrections, and the rated examples and pairs that training reads
- ``store_runs``: training runs, training-set snapshots, the embedding cache
- ``store_adapters``: the adapter registry, the production pointer, traffic-split experiments
- ``store_arena``: arena battles and votes
- ``store_review``: review states of rated answers (what may train) and per-user trust
- ``store_conversations``: a user's own conversation list: search, resume, rename, delete
- ``store_scrub``: the PII scrubber's results per text (nightly builds scrub only new text)
"""

from __future__ import annotations

from feedback.store_adapters import AdapterStore
from feedback.store_arena import ArenaStore
from feedback.store_conversations import ConversationStore
from feedback.store_core import BASE, MAX_TEXT_CHARS, RATING_REASONS, RATINGS, RUN_STATUSES, WINNERS, new_id
from feedback.store_ratings import RatingStore
from feedback.store_review import ReviewStore
from feedback.store_runs import RunStore
from feedback.store_scrub import ScrubStore
from feedback.store_turns import TurnStore

__all__ = ["BASE", "MAX_TEXT_CHARS", "RATING_REASONS", "RATINGS", "RUN_STATUSES", "WINNERS", "FeedbackStore", "new_id"]


class FeedbackStore(TurnStore, RatingStore, RunStore, AdapterStore, ArenaStore, ReviewStore, ConversationStore,
                    ScrubStore):
    """Conversations, ratings, corrections, arena votes, experiments, adapters, runs, caches and review states."""
