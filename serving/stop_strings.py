"""Stop strings over streamed text: cut the answer just before the first one, never stream part of one.

A stop string may span tokens, so text that could still become the start of one is held back until the
next token decides; what is released is final.
"""

from __future__ import annotations


class StopStrings:
    """Feed decoded text in; get back the part that is safe to stream."""

    def __init__(self, stops: tuple[str, ...] | list[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # everything decoded so far (cut at the stop string once one is found)
        self.sent = 0  # characters of ``text`` already released
        self.hit = False

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the newly releasable text. After a stop string is found, ``hit`` is set."""
        if self.hit or not delta:
            return ""
        self.text += delta
        if not self.stops:
            return self._release(len(self.text))
        # Only an occurrence that ends inside the new text is new; earlier ones were looked for already.
        start = max(0, len(self.text) - len(delta) - self.longest + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            cut = min(found)
            self.hit = True
            out = self._release(cut)
            self.text = self.text[:cut]
            return out
        # Hold back the longest tail of the text that is the start of some stop string.
        hold = 0
        for k in range(min(self.longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                hold = k
                break
        return self._release(len(self.text) - hold)

    def flush(self) -> str:
        """The answer ended: what was held back is no stop string after all."""
        return "" if self.hit else self._release(len(self.text))

    def _release(self, end: int) -> str:
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out
