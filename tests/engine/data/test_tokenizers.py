from __future__ import annotations

import json

import pytest

from engine.data.tokenizers import (
    DEFAULT_SPECIAL_TOKENS,
    END_OF_TEXT,
    BPETokenizer,
    CharTokenizer,
    TextTokenizer,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def small_bpe(hamlet_paragraphs) -> BPETokenizer:
    return BPETokenizer.train(hamlet_paragraphs[:400], vocab_size=400)


def test_char_tokenizer_round_trips_shakespeare(hamlet_text):
    text = hamlet_text[:20_000]
    tok = CharTokenizer.train(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text)) + 1
    assert tok.eot_id == 0 and tok.decode([tok.eot_id]) == END_OF_TEXT


def test_char_tokenizer_encodes_special_tokens_written_in_text():
    tok = CharTokenizer.train(["to be or not"], special_tokens=[END_OF_TEXT, "<|user|>"])
    ids = tok.encode("to be<|endoftext|><|user|>not")
    assert ids[5:7] == [tok.eot_id, 1]
    assert tok.decode(ids) == "to be<|endoftext|><|user|>not"


def test_char_tokenizer_names_an_unknown_character():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"'é' \(U\+00E9\)"):
        tok.encode("abé")


def test_bpe_round_trips_text_it_never_saw(small_bpe):
    text = "Ünïcode 数据 and emoji 🙂 survive byte-level BPE\n\ttabs too"
    assert small_bpe.decode(small_bpe.encode(text)) == text


def test_bpe_has_requested_size_and_default_specials_first(small_bpe):
    assert small_bpe.vocab_size == 400
    assert small_bpe.special_tokens == list(DEFAULT_SPECIAL_TOKENS)
    assert small_bpe.eot_id == 0
    assert small_bpe.encode("<|user|>hi<|endoftext|>")[0] == 2
    assert small_bpe.encode("<|user|>hi<|endoftext|>")[-1] == small_bpe.eot_id


def test_bpe_learns_merges_that_shorten_shakespeare(small_bpe, hamlet_text):
    sample = hamlet_text[50_000:60_000]
    assert len(small_bpe.encode(sample)) < 0.6 * len(sample.encode("utf-8"))
    assert small_bpe.encode_batch([sample, "Hamlet"]) == [
        small_bpe.encode(sample),
        small_bpe.encode("Hamlet"),
    ]


def test_bpe_refuses_a_vocabulary_smaller_than_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        BPETokenizer.train(["x"], vocab_size=100)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_saved_tokenizers_load_as_the_same_kind(kind, tmp_path, small_bpe, hamlet_text):
    tok = small_bpe if kind == "bpe" else CharTokenizer.train(hamlet_text[:5000])
    path = tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, TextTokenizer) and loaded.kind == kind
    sample = hamlet_text[1000:3000]
    assert loaded.encode(sample) == tok.encode(sample)
    assert (loaded.vocab_size, loaded.eot_id) == (tok.vocab_size, tok.eot_id)


def test_bpe_with_custom_specials_keeps_end_of_text_first(tmp_path):
    tok = BPETokenizer.train(["some text " * 50], vocab_size=300, special_tokens=["<|sep|>"])
    loaded = load_tokenizer(tok.save(tmp_path / "t.json"))
    assert loaded.special_tokens == [END_OF_TEXT, "<|sep|>"] and loaded.eot_id == 0


def test_loading_something_else_says_what_it_is(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither a character tokenizer nor"):
        load_tokenizer(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="train-tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
