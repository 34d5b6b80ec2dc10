"""Memorisation: generated spans looked up verbatim in the training text."""

from __future__ import annotations

from eval_helpers import TRAIN_DOCS

from engine.evaluate.memorisation import (
    DOCUMENT_SEPARATOR,
    SpanIndex,
    load_split,
    span_hashes,
    training_text,
)
from engine.evaluate.text import memorisation


def test_a_sample_copied_from_the_training_text_is_all_memorised_and_a_clean_one_not_at_all():
    index = SpanIndex.build(DOCUMENT_SEPARATOR.join(TRAIN_DOCS), 50)
    copied = {"text": TRAIN_DOCS[1][10:130]}
    clean = {"text": "A quiet brown fox naps under the old oak tree while the farmer sleeps."}
    assert memorisation([copied], index) == {
        "memorisation_share": 1.0,
        "memorisation_spans": 71.0,  # 120 characters: 71 windows of 50
    }
    assert copied["memorised_spans"] == copied["spans"] == 71
    assert memorisation([clean], index)["memorisation_share"] == 0.0
    both = memorisation([copied, clean], index)
    assert both["memorisation_share"] == 71 / (71 + clean["spans"])


def test_a_partly_copied_sample_counts_the_spans_inside_the_copy():
    index = SpanIndex.build(TRAIN_DOCS[0], 50)
    text = TRAIN_DOCS[0][:60] + " and then something the play never says at all."
    found, spans = index.found(text)
    assert spans == len(text) - 49 and found == 11  # windows starting at 0..10 lie in the copy
    assert index.found("too short to hold one span") == (0, 0)


def test_span_hashes_are_exact_per_window():
    hashes = span_hashes("abcabcabc", 3)
    assert len(hashes) == 7
    assert hashes[0] == hashes[3] == hashes[6] and len(set(hashes.tolist())) == 3
    assert len(span_hashes("ab", 3)) == 0


def test_the_training_text_is_the_decoded_train_split_with_documents_kept_apart(tiny_text):
    manifest = load_split(tiny_text.shards, "train")
    text, capped = training_text(manifest, tiny_text.tokenizer, 1_000_000)
    assert not capped
    assert text == DOCUMENT_SEPARATOR + DOCUMENT_SEPARATOR.join(TRAIN_DOCS)
    # A span across two documents was never in any one of them.
    index = SpanIndex.build(text, 50)
    across = TRAIN_DOCS[0][-25:] + TRAIN_DOCS[1][:25]
    assert index.found(across) == (0, 1)
    assert index.found(TRAIN_DOCS[0][-50:]) == (1, 1)


def test_the_training_text_is_capped_and_says_so(tiny_text):
    manifest = load_split(tiny_text.shards, "train")
    text, capped = training_text(manifest, tiny_text.tokenizer, 100)
    assert capped and len(text) == 100
    assert text == (DOCUMENT_SEPARATOR + TRAIN_DOCS[0])[:100]
