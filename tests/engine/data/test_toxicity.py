"""Toxicity: lexicon scorer by default, any scorer pluggable, threshold decides."""

from __future__ import annotations

from engine.data.documents import Document
from engine.data.toxicity import (
    DEFAULT_LEXICON,
    LexiconScorer,
    ToxicityConfig,
    ToxicityFilter,
    load_lexicon,
)


def test_the_shipped_lexicon_flags_a_rant_and_keeps_the_plays(play_documents):
    stage = ToxicityFilter(ToxicityConfig())
    words = sorted(load_lexicon(DEFAULT_LEXICON))
    rant = " ".join(f"you {w}, you utter {w}!" for w in words[:10]) + " " + play_documents[0][:800]
    assert stage(Document(rant)) == "above_threshold"
    kept = [stage(Document(text)) is None for text in play_documents]
    assert sum(kept) / len(kept) > 0.97


def test_threshold_and_custom_lexicon(tmp_path):
    lexicon = tmp_path / "words.txt"
    lexicon.write_text("# my list\nvillain\n")
    text = "O villain, villain, smiling, damned villain! " + "the play goes on and on " * 20
    assert LexiconScorer(load_lexicon(lexicon)).score("villain, hero!") == 0.5
    assert ToxicityFilter(ToxicityConfig(lexicon=str(lexicon)))(Document(text)) == "above_threshold"
    assert (
        ToxicityFilter(ToxicityConfig(lexicon=str(lexicon), threshold=0.5))(Document(text)) is None
    )


def test_any_scorer_can_replace_the_lexicon():
    class AlwaysToxic:
        def score(self, text: str) -> float:
            return 1.0

    assert (
        ToxicityFilter(ToxicityConfig(), scorer=AlwaysToxic())(Document("hello"))
        == "above_threshold"
    )
