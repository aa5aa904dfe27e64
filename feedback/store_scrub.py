"""The PII scrubber's results per text, so a nightly build scrubs only texts it has not seen (schema v9).

Keyed by the sha256 of the raw text and stamped with the scrubber's version: a text scrubbed by an
older scrubber counts as not seen. Only scrubbed text is stored, never the raw one.
"""

from __future__ import annotations

import json

from feedback.store_core import StoreCore
from feedback.store_ratings import MAX_KEYED, _chunks, _placeholders


class ScrubStore(StoreCore):
    """The PII scrubber's cache: scrubbed text and replacement counts per raw-text hash."""

    def get_scrubbed(self, version: str, keys: list[str]) -> dict[str, tuple[str, dict]]:
        """The cached (scrubbed text, counts by kind) among ``keys`` for scrubber ``version``."""
        found: dict[str, tuple[str, dict]] = {}
        unique = sorted(set(keys))
        with self._read() as cur:
            if len(unique) <= MAX_KEYED:  # a night's texts: primary-key lookups
                rows = []
                for chunk in _chunks(unique):
                    cur.execute(f"SELECT key, version, text, counts FROM scrubbed "
                                f"WHERE key IN ({_placeholders(len(chunk))})", chunk)
                    rows += cur.fetchall()
            else:  # a rebuild of much of the history: one join beats a million lookups
                import pyarrow as pa  # only on this path: keeps `import feedback.store` light

                cur.register("wanted_keys", pa.table({"key": pa.array(unique, pa.string())}))
                try:
                    rows = cur.execute("""SELECT s.key, s.version, s.text, s.counts FROM scrubbed s
                                          SEMI JOIN wanted_keys w ON w.key = s.key""").fetchall()
                finally:
                    cur.unregister("wanted_keys")
        for k, v, text, counts in rows:
            if v == version:
                found[k] = (text, json.loads(counts) if counts else {})
        return found

    def put_scrubbed(self, version: str, items: dict[str, tuple[str, dict]]) -> None:
        """Cache scrubbed texts by raw-text hash; a key scrubbed by another version is replaced."""
        if not items:
            return
        import pyarrow as pa

        table = pa.table({"key": list(items), "text": [t for t, _ in items.values()],
                          "counts": [json.dumps(c) if c else None for _, c in items.values()]})
        with self._write() as cur:
            cur.register("new_scrubbed", table)
            try:
                cur.execute("""INSERT INTO scrubbed SELECT key, ?, text, counts FROM new_scrubbed
                               ON CONFLICT (key) DO UPDATE SET version = excluded.version, text = excluded.text,
                               counts = excluded.counts""", [version])
            finally:
                cur.unregister("new_scrubbed")
