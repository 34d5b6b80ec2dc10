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
from itertools import filterfalse, repeat

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
        all_words = doc.words
        if not all_words:
            return "too_few_words"
        # Most words are purely alphabetic (str.isalpha runs in C); only the rest need the
        # regexes that tell "punctuation only" and "has a letter" apart.
        mixed = list(filterfalse(str.isalpha, all_words))
        punctuation = list(filter(_PUNCTUATION_ONLY.match, mixed))
        n_words = len(all_words) - len(punctuation)
        if n_words < c.min_words:
            return "too_few_words"
        if n_words > c.max_words:
            return "too_many_words"
        mean_length = (sum(map(len, all_words)) - sum(map(len, punctuation))) / n_words
        if mean_length < c.min_mean_word_length:
            return "mean_word_length_too_short"
        if mean_length > c.max_mean_word_length:
            return "mean_word_length_too_long"
        text = doc.text
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n_words > c.max_symbol_word_ratio:
            return "symbol_word_ratio"
        lines = list(filter(None, map(str.strip, doc.lines)))
        if lines:
            bullets = sum(map(str.startswith, lines, repeat(BULLETS)))
            if bullets / len(lines) > c.max_bullet_line_fraction:
                return "bullet_lines"
            ellipses = sum(map(str.endswith, lines, repeat(ELLIPSES)))
            if ellipses / len(lines) > c.max_ellipsis_line_fraction:
                return "ellipsis_lines"
        without_letter = len(list(filterfalse(_HAS_ALPHA.search, mixed)))
        if 1 - without_letter / len(all_words) < c.min_alpha_word_fraction:
            return "alpha_word_fraction"
        stop_words = self._stop_words
        found = 0
        for word in all_words:
            if word.lower().strip(".,;:!?\"'()") in stop_words:
                found += 1
                if found >= c.min_stop_words:
                    break
        if found < c.min_stop_words:
            return "too_few_stop_words"
        return None


def _duplicate_share(items: list[str]) -> tuple[float, float]:
    """(fraction of items repeating an earlier one, fraction of their characters).

    Each distinct item's first occurrence is the only one not counted, so the duplicate
    characters are all characters minus those of the distinct items.
    """
    distinct = set(items)
    total_chars = sum(map(len, items))
    dup_chars = total_chars - sum(map(len, distinct))
    return (len(items) - len(distinct)) / len(items), dup_chars / max(total_chars, 1)


# Odd 64-bit multiplier: combining word ids as a polynomial keeps n-gram hashes distinct
# with overwhelming probability while staying one vectorised multiply-add per n.
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


class RepetitionFilter:
    name = "repetition"

    def __init__(self, config: RepetitionConfig):
        self.config = config
        dup_limits = config.max_dup_ngram_char_fraction
        # smallest limit from n on: once coverage is under it, no larger n can fail
        self._dup_floor = {n: min(v for m, v in dup_limits.items() if m >= n) for n in dup_limits}
        self._max_top_n = max(config.max_top_ngram_char_fraction, default=0)
        self._max_n = max(
            [*config.max_top_ngram_char_fraction, *config.max_dup_ngram_char_fraction], default=0
        )

    def __call__(self, doc: Document) -> str | None:
        c = self.config
        lines = list(filter(str.strip, doc.lines))
        if lines:
            dup_fraction, dup_char_fraction = _duplicate_share(lines)
            if dup_fraction > c.max_dup_line_fraction:
                return "dup_line_fraction"
            if dup_char_fraction > c.max_dup_line_char_fraction:
                return "dup_line_char_fraction"
        paragraphs = list(filter(str.strip, doc.paragraphs))
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
        # Python's string hash stands in for a word id: equal words, equal hashes; a false
        # match between two of a document's words has odds ~2**-64.
        ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total_chars = int(lengths.sum())
        # prefix sums give the characters of any n-gram in O(1)
        prefix = np.concatenate(([0], np.cumsum(lengths)))
        top_limits = self.config.max_top_ngram_char_fraction
        dup_limits = self.config.max_dup_ngram_char_fraction
        # Bound for the top n-gram: each occurrence of an n-gram holds an occurrence of each
        # of its words, so (count x characters) of any n-gram is at most n times the largest
        # (count x length) of a single word. Prose rarely comes near the limits, which saves
        # sorting the 2-, 3- and 4-grams.
        order, starts = _sorted_groups(ids)
        group_starts = np.flatnonzero(starts)
        word_counts = np.diff(np.append(group_starts, len(ids)))
        heaviest_word = int((word_counts * lengths[order[group_starts]]).max())
        dup_done = False
        hashes = ids
        for n in range(2, self._max_n + 1):
            if len(words) < n:
                break
            hashes = hashes[:-1] * _NGRAM_MULTIPLIER + ids[n - 1 :] + np.uint64(1)
            top_limit = top_limits.get(n)
            if top_limit is not None and n * heaviest_word <= top_limit * total_chars:
                top_limit = None
            dup_limit = None if dup_done else dup_limits.get(n)
            if top_limit is None and dup_limit is None:
                if dup_done and n >= self._max_top_n:
                    break
                continue
            order, starts = _sorted_groups(hashes)
            if starts.all():  # every n-gram is distinct, and so is every longer one
                return None
            group_starts = np.flatnonzero(starts)
            if top_limit is not None:
                counts = np.diff(np.append(group_starts, len(hashes)))
                firsts = order[group_starts]
                chars = prefix[firsts + n] - prefix[firsts]
                # the most frequent n-gram; among equally frequent ones, the longest
                top_chars = int(chars[counts == counts.max()].max()) * int(counts.max())
                if top_chars > top_limit * total_chars:
                    return f"top_{n}gram_char_fraction"
            if dup_limit is not None:
                # every occurrence after the first (earliest) of its n-gram
                is_repeat = np.ones(len(hashes), dtype=bool)
                is_repeat[np.minimum.reduceat(order, group_starts)] = False
                repeats = np.flatnonzero(is_repeat)
                size = len(words) + n + 1
                covered = np.bincount(repeats, minlength=size) - np.bincount(
                    repeats + n, minlength=size
                )
                in_duplicate = np.cumsum(covered)[: len(words)] > 0
                fraction = lengths[in_duplicate].sum() / total_chars
                if fraction > dup_limit:
                    return f"dup_{n}gram_char_fraction"
                # Coverage by repeated n-grams only shrinks as n grows (a repeated (n+1)-gram
                # is two overlapping repeated n-grams): under every later limit, we can stop.
                if fraction <= self._dup_floor[n]:
                    dup_done = True
        return None


def _sorted_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argsort of values, mask of the positions in sorted order where a new value starts)."""
    order = np.argsort(values)
    ordered = values[order]
    starts = np.empty(len(values), dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return order, starts
