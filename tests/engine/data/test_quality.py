"""Gopher quality and repetition filters: real prose passes, each kind of junk names its reason."""

from __future__ import annotations

import random

import pytest

from engine.data.documents import Document
from engine.data.quality import QualityConfig, QualityFilter, RepetitionConfig, RepetitionFilter

quality = QualityFilter(QualityConfig())
repetition = RepetitionFilter(RepetitionConfig())


def test_shakespeare_documents_pass_both_filters(play_documents):
    reasons = [quality(Document(t)) or repetition(Document(t)) for t in play_documents]
    assert reasons.count(None) / len(reasons) > 0.9


PROSE = "The quality of mercy is not strained, it droppeth as the gentle rain from heaven upon the place beneath. "


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Too short to be a document.", "too_few_words"),
        ("a b c d e f g h " * 20, "mean_word_length_too_short"),
        (
            "https://example.com/" + "x" * 40 + " " + "supercalifragilisticexpialidocious " * 60,
            "mean_word_length_too_long",
        ),
        (PROSE * 3 + "#tag #more #hash " * 10, "symbol_word_ratio"),
        (
            "\n".join(f"- item number {i} of the list with the and of" for i in range(60)),
            "bullet_lines",
        ),
        (
            "\n".join(f"Read more about the story of {i} and the rest..." for i in range(60)),
            "ellipsis_lines",
        ),
        (PROSE + " ".join(str(n) for n in range(100_000, 100_200)), "alpha_word_fraction"),
        (
            "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod " * 8,
            "too_few_stop_words",
        ),
    ],
)
def test_quality_filter_names_the_failing_rule(text, reason):
    assert quality(Document(text)) == reason


def test_quality_thresholds_are_configurable():
    text = "Short but fine: the cat and the dog are friends."
    assert QualityFilter(QualityConfig(min_words=5))(Document(text)) is None
    assert QualityFilter(QualityConfig())(Document(text)) == "too_few_words"


def test_repeated_lines_and_paragraphs_are_caught(play_documents):
    real = play_documents[10]
    assert repetition(Document(real)) is None
    assert (
        repetition(Document("\n".join(["Buy now, best price!"] * 5 + real.split("\n")[:8])))
        == "dup_line_fraction"
    )
    paragraphs = real.split("\n\n")
    spam = "\n\n".join(paragraphs[:4] + [paragraphs[0]] * 3)
    assert repetition(Document(spam)).startswith("dup_")


def test_top_ngram_and_duplicate_ngram_rules(play_documents):
    rng = random.Random(0)
    words = play_documents[3].split()
    stuffed = list(words[:300])
    for _ in range(60):  # a keyword phrase sprinkled through a real passage
        stuffed.insert(rng.randrange(len(stuffed)), "cheap pills")
    assert repetition(Document(" ".join(stuffed))) == "top_2gram_char_fraction"
    copied = words[:200] + words[50:110]  # a 60-word passage pasted twice, on one line
    assert repetition(Document(" ".join(copied))) == "dup_5gram_char_fraction"


def _reference_fractions(words: list[str], n: int) -> tuple[float, float]:
    """Gopher's statistics computed the slow, obvious way."""
    total = sum(map(len, words))
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts: dict[tuple, int] = {}
    for gram in grams:
        counts[gram] = counts.get(gram, 0) + 1
    top_gram = max(counts, key=lambda g: (counts[g], sum(map(len, g))))  # ties: the longest
    top = counts[top_gram] * sum(map(len, top_gram)) / total if counts[top_gram] > 1 else 0.0
    seen, covered = set(), [False] * len(words)
    for i, gram in enumerate(grams):
        if gram in seen:
            covered[i : i + n] = [True] * n
        seen.add(gram)
    return top, sum(len(w) for w, c in zip(words, covered, strict=True) if c) / total


@pytest.mark.parametrize("seed", range(4))
def test_ngram_statistics_match_a_direct_count(seed):
    rng = random.Random(seed)
    vocabulary = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis"]
    words = [rng.choice(vocabulary[: 4 + seed * 2]) for _ in range(rng.randrange(40, 120))]
    for n in (2, 3, 4, 5, 7, 10):
        top, dup = _reference_fractions(words, n)
        for kind, value in (("top", top), ("dup", dup)):
            limits = {m: 1.0 for m in (2, 3, 4, 5, 7, 10)}
            probe = dict(limits)
            probe[n] = value - 1e-9  # just under the true value: must fail at exactly this n
            other = {} if kind == "top" else probe
            config = RepetitionConfig(
                max_dup_line_fraction=1,
                max_dup_paragraph_fraction=1,
                max_dup_line_char_fraction=1,
                max_dup_paragraph_char_fraction=1,
                max_top_ngram_char_fraction=probe if kind == "top" else {},
                max_dup_ngram_char_fraction=other,
            )
            got = RepetitionFilter(config)._ngram_reason(words)
            if value > 0:
                assert got == f"{kind}_{n}gram_char_fraction", (n, kind, value)
            config_at = RepetitionConfig(
                max_top_ngram_char_fraction={n: value} if kind == "top" else {},
                max_dup_ngram_char_fraction={n: value} if kind == "dup" else {},
            )
            assert RepetitionFilter(config_at)._ngram_reason(words) is None, (n, kind, value)
