"""Stop strings over a stream of text deltas: cut exactly before the first stop, even across deltas."""

from __future__ import annotations


class StopText:
    """Feed deltas; get back the text that is safe to emit and whether a stop string was hit.

    Text that could be the start of a stop string is held back until the next delta decides it, so a
    stop spanning two tokens is cut exactly and nothing past it is ever emitted.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.hit = False

    def feed(self, delta: str) -> str:
        if self.hit:
            return ""
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            self._held = ""
            return text[:cut]
        keep = 0  # the longest tail of text that begins some stop string
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:k]):
                    keep = k
                    break
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, at the end of the answer (no stop string followed it)."""
        held, self._held = self._held, ""
        return "" if self.hit else held
