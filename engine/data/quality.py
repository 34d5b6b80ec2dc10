"""Gopher quality and repetition filters (Rae et al. 2021, "Scaling Language Models:
Methods, Analysis & Insights from Training Gopher", appendix A1.1, table A2).

Defaults are the published thresholds. Each check returns the first reason that fails, so
the report says *why* a document went (``too_few_words``, ``dup_line_fraction`` ...).

Repetition statistics follow the paper: duplicate lines/paragraphs count every occurrence
after the first; "top n-gram" is the share of word characters taken by the most frequent
word n-gram (n = 2..4); "duplicate n-gram" is the share of word characters covered by
n-grams (n = 5..10) that already occurred earlier in the document, overlaps counted once.
N-grams are hashed to 64-bit integers and counted with numpy, which keeps the filter at
several MB/s per core in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from engine.data.documents import Document

BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "‣", "⁃")
ELLIPSES = ("...", "…")
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_HAS_ALPHA = re.compile(r"[^\W\d_]")
_PUNCTUATION_ONLY = re.compile(r"^[\W_]+$")


@dataclass
class QualityConfig:
    min_words: int = 50  # too short to be prose (menus, captions)
    max_words: int = 100_000  # longer is usually a dump, not a document
    min_mean_word_length: float = 3.0  # below: symbol soup, tables of numbers
    max_mean_word_length: float = 10.0  # above: URLs, hashes, base64
    max_symbol_word_ratio: float = 0.1  # "#" and "..." per word: tag clouds, truncated teasers
    max_bullet_line_fraction: float = 0.9  # lists of links
    max_ellipsis_line_fraction: float = 0.3  # lines cut off with "..." (previews)
    min_alpha_word_fraction: float = 0.8  # words holding at least one letter
    min_stop_words: int = 2  # natural English uses "the", "and", "of" ...
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))


@dataclass
class RepetitionConfig:
    max_dup_line_fraction: float = 0.30  # lines that repeat an earlier line
    max_dup_paragraph_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20  # characters in repeated lines
    max_dup_paragraph_char_fraction: float = 0.20
    # n -> largest share of characters in the single most frequent n-gram
    max_top_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    # n -> largest share of characters covered by n-grams seen earlier in the document
    max_dup_ngram_char_fraction: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class QualityFilter:
    name = "quality"

    def __init__(self, config: QualityConfig):
        self.config = config
        self._stop_words = frozenset(w.lower() for w in config.stop_words)

    def __call__(self, doc: Document) -> str | None:
        c = self.config
        words = [w for w in doc.words if not _PUNCTUATION_ONLY.match(w)]
        n_words = len(words)
        if n_words < c.min_words:
            return "too_few_words"
        if n_words > c.max_words:
            return "too_many_words"
        mean_length = sum(map(len, words)) / n_words
        if mean_length < c.min_mean_word_length:
            return "mean_word_length_too_short"
        if mean_length > c.max_mean_word_length:
            return "mean_word_length_too_long"
        text = doc.text
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n_words > c.max_symbol_word_ratio:
            return "symbol_word_ratio"
        lines = [line.strip() for line in doc.lines if line.strip()]
        if lines:
            if (
                sum(line.startswith(BULLETS) for line in lines) / len(lines)
                > c.max_bullet_line_fraction
            ):
                return "bullet_lines"
            if (
                sum(line.endswith(ELLIPSES) for line in lines) / len(lines)
                > c.max_ellipsis_line_fraction
            ):
                return "ellipsis_lines"
        if (
            sum(1 for w in doc.words if _HAS_ALPHA.search(w)) / len(doc.words)
            < c.min_alpha_word_fraction
        ):
            return "alpha_word_fraction"
        stop_words = self._stop_words
        found = 0
        for word in words:
            if word.lower().strip(".,;:!?\"'()") in stop_words:
                found += 1
                if found >= c.min_stop_words:
                    break
        if found < c.min_stop_words:
            return "too_few_stop_words"
        return None


def _duplicate_share(items: list[str]) -> tuple[float, float]:
    """(fraction of items repeating an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / len(items), dup_chars / max(total_chars, 1)


# Odd 64-bit multiplier: combining word ids as a polynomial keeps n-gram hashes distinct
# with overwhelming probability while staying one vectorised multiply-add per n.
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class RepetitionFilter:
    name = "repetition"

    def __init__(self, config: RepetitionConfig):
        self.config = config
        self._max_n = max(
            [*config.max_top_ngram_char_fraction, *config.max_dup_ngram_char_fraction], default=0
        )

    def __call__(self, doc: Document) -> str | None:
        c = self.config
        lines = [line for line in doc.lines if line.strip()]
        if lines:
            dup_fraction, dup_char_fraction = _duplicate_share(lines)
            if dup_fraction > c.max_dup_line_fraction:
                return "dup_line_fraction"
            if dup_char_fraction > c.max_dup_line_char_fraction:
                return "dup_line_char_fraction"
        paragraphs = [p for p in doc.paragraphs if p.strip()]
        if paragraphs:
            dup_fraction, dup_char_fraction = _duplicate_share(paragraphs)
            if dup_fraction > c.max_dup_paragraph_fraction:
                return "dup_paragraph_fraction"
            if dup_char_fraction > c.max_dup_paragraph_char_fraction:
                return "dup_paragraph_char_fraction"
        return self._ngram_reason(doc.words)

    def _ngram_reason(self, words: list[str]) -> str | None:
        if len(words) < 2 or self._max_n == 0:
            return None
        vocabulary: dict[str, int] = {}
        ids = np.array([vocabulary.setdefault(w, len(vocabulary)) for w in words], dtype=np.uint64)
        if len(vocabulary) == len(words):
            return None  # no word repeats, so no n-gram can
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total_chars = int(lengths.sum())
        # prefix sums give the characters of any n-gram in O(1)
        prefix = np.concatenate(([0], np.cumsum(lengths)))
        hashes = ids + np.uint64(1)
        for n in range(1, self._max_n + 1):
            if n > 1:
                if len(words) < n:
                    break
                hashes = hashes[:-1] * _NGRAM_MULTIPLIER + ids[n - 1 :] + np.uint64(1)
            top_limit = self.config.max_top_ngram_char_fraction.get(n)
            dup_limit = self.config.max_dup_ngram_char_fraction.get(n)
            if top_limit is None and dup_limit is None:
                continue
            unique, first_index, inverse, counts = np.unique(
                hashes, return_index=True, return_inverse=True, return_counts=True
            )
            if len(unique) == len(hashes):
                continue  # every n-gram is distinct
            if top_limit is not None:
                top = int(np.argmax(counts))
                start = int(first_index[top])
                top_chars = int(prefix[start + n] - prefix[start]) * int(counts[top])
                if counts[top] > 1 and top_chars / total_chars > top_limit:
                    return f"top_{n}gram_char_fraction"
            if dup_limit is not None:
                repeats = np.flatnonzero(first_index[inverse] != np.arange(len(hashes)))
                size = len(words) + n + 1
                covered = np.bincount(repeats, minlength=size) - np.bincount(
                    repeats + n, minlength=size
                )
                in_duplicate = np.cumsum(covered)[: len(words)] > 0
                if lengths[in_duplicate].sum() / total_chars > dup_limit:
                    return f"dup_{n}gram_char_fraction"
        return None
