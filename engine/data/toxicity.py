"""Toxicity filter: a scorer interface with a lexicon-based default and a threshold.

The default ``LexiconScorer`` scores a document by the share of its words found in a word
list (``lexicons/toxicity_en.txt``, shipped with the engine). It is cheap and explainable
and it is the right first pass before a learned classifier: anything with a
``score(text) -> float`` in [0, 1] can replace it (``ToxicityFilter(config, scorer=...)``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.data.documents import Document

DEFAULT_LEXICON = Path(__file__).with_name("lexicons") / "toxicity_en.txt"
# ASCII punctuation and digits -> spaces, then split: 3x faster than a word regex.
_SEPARATORS = str.maketrans({char: " " for char in string.punctuation + string.digits})


class ToxicityScorer(Protocol):
    def score(self, text: str) -> float:
        """0.0 (clean) .. 1.0 (toxic)."""
        ...


def load_lexicon(path: str | Path) -> frozenset[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"toxicity lexicon {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(
        line.strip().lower() for line in lines if line.strip() and not line.startswith("#")
    )


class LexiconScorer:
    """Share of words that are in the lexicon."""

    def __init__(self, words: frozenset[str]):
        self.words = words

    def score(self, text: str) -> float:
        words = text.lower().translate(_SEPARATORS).split()
        if not words:
            return 0.0
        return sum(map(self.words.__contains__, words)) / len(words)


@dataclass
class ToxicityConfig:
    # 2% of words: a rant, not a novel with a villain who swears now and then.
    threshold: float = 0.02
    lexicon: str = ""  # a word list file; empty: the English list shipped with the engine


class ToxicityFilter:
    name = "toxicity"

    def __init__(self, config: ToxicityConfig, scorer: ToxicityScorer | None = None):
        self.config = config
        self.scorer = scorer or LexiconScorer(load_lexicon(config.lexicon or DEFAULT_LEXICON))
        # One key per filter: the document's cache outlives no text change, so the report's
        # after-cleaning measure (engine.data.residual) reuses this stage's score for free.
        self._cache_key = f"toxicity_score:{id(self)}"

    def is_toxic(self, doc: Document) -> bool:
        """The one rule both the stage and the report's after-cleaning count apply."""
        score = doc.cached(self._cache_key, lambda d: self.scorer.score(d.text))
        return score > self.config.threshold

    def __call__(self, doc: Document) -> str | None:
        return "above_threshold" if self.is_toxic(doc) else None
