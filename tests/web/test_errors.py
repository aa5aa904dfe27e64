"""Every error the store and the serving layer raise has its own HTTP status: none falls through to a bare 500."""

from __future__ import annotations

import feedback.errors as fe
import serving.errors as se
from web.errors import classify

# The server's problems, not the client's: a data dir newer than this code, a backend or model that is down.
DELIBERATE_5XX = {fe.SchemaTooNew, se.BackendUnavailable, se.ModelUnavailable}


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(subclasses(c) for c in found))


def test_every_core_error_has_a_status_of_its_own():
    for cls in subclasses(fe.FeedbackError) | subclasses(se.ServingError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, "why")
        status, code, _ = classify(exc)
        if cls in DELIBERATE_5XX:
            assert status >= 500, cls
        else:
            assert 400 <= status < 500, (cls, status)
        assert code != "internal_error", cls
