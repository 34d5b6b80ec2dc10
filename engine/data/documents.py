"""The unit that flows through the cleaning stages: text, metadata, where it came from.

Stages share per-document analysis (words, lines, paragraphs) through cached properties;
assigning a new ``text`` drops the cache, so a stage that rewrites the text (normalization,
PII redaction) never leaves a later stage looking at stale words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(slots=True)
class Document:
    text: str
    # Every other field of the input record, written back unchanged next to the text.
    meta: dict[str, Any] = field(default_factory=dict)
    # "file:line" (or "file#row" for Parquet): how the report points a user at the record.
    location: str = ""
    subject: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def set_text(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self._cache.clear()

    def cached(self, key: str, compute):
        """Memoise ``compute(self)`` under ``key`` until the text changes."""
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = compute(self)
            return value

    @property
    def words(self) -> list[str]:
        """Whitespace-separated tokens, as Gopher counts words."""
        return self.cached("words", lambda d: d.text.split())

    @property
    def lines(self) -> list[str]:
        return self.cached("lines", lambda d: d.text.split("\n"))

    @property
    def paragraphs(self) -> list[str]:
        return self.cached("paragraphs", lambda d: _PARAGRAPH_BREAK.split(d.text.strip()))
