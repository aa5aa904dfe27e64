"""Which signed-in user each UI session belongs to.

Gradio keys a browser tab's state, its event stream (``/gradio_api/queue/data?session_hash=...``), its
heartbeat and its media streams by a hash the page makes up, not by the login: whoever names a hash reads
that tab's events, and a reader that disconnects makes Gradio drop the tab's pending events. The first
signed-in user whose handler runs under a hash owns it; handlers (``web.ui_common.principal_of``) and those
routes (``web.server``) refuse anyone else.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

MAX_SESSIONS = 100_000  # hashes remembered, least recently used dropped first (a dropped one is claimed again)


class SessionOwners:
    def __init__(self, limit: int = MAX_SESSIONS):
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def claim(self, session_hash: str, user: str) -> bool:
        """True when ``session_hash`` is ``user``'s (made so now if nobody held it)."""
        with self._lock:
            owner = self._owners.setdefault(session_hash, user)
            self._owners.move_to_end(session_hash)
            while len(self._owners) > self._limit:
                self._owners.popitem(last=False)
            return owner == user

    def owner(self, session_hash: str) -> str | None:
        with self._lock:
            return self._owners.get(session_hash)
