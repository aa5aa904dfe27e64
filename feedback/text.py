"""Which strings can be stored and tokenized: the one check the store, the API and the UI share."""

from __future__ import annotations

import re

# NUL cuts strings short in C code (tokenizers, DuckDB); a lone surrogate is a valid JSON escape but no text.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenized or stored ("must not ..."), or None when it can."""
    bad = _BAD_TEXT.search(text)
    if bad is None:
        return None
    return "must not contain NUL characters" if bad.group() == "\x00" else "must not hold a lone surrogate (invalid Unicode)"
