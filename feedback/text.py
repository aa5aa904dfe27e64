"""Which strings can be stored and tokenized, and what of them shows: the checks the store, the API, the UI
and the training-set cleaning share."""

from __future__ import annotations

import re
import unicodedata

# NUL cuts strings short in C code (tokenizers, DuckDB); a lone surrogate is a valid JSON escape but no text.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenized or stored ("must not ..."), or None when it can."""
    bad = _BAD_TEXT.search(text)
    if bad is None:
        return None
    return "must not contain NUL characters" if bad.group() == "\x00" else "must not hold a lone surrogate (invalid Unicode)"


def visible(text: str) -> str:
    """``text`` without Unicode format characters (category Cf: U+200B, U+2060, U+FEFF, ...), which show
    nothing: a correction of only those is empty, and invisible variants of one answer are one answer."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
