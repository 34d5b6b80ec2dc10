"""Cutting documents out of token shards gives, byte for byte, what re-tokenizing gives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.data.erasure_files import record_text_reader
from engine.data.packing import is_validation, tokenize_to_shards
from engine.data.shards import load_manifest
from engine.data.token_cut import (
    CutNotExact,
    cut_documents,
    tokenizer_subject_tokens,
)
from engine.data.tokenizers import BPETokenizer, CharTokenizer
from tests.engine.data.conftest import write_jsonl

VAL = 0.3
SHARD_TOKENS = 1_500


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, play_documents):
    """40 documents of 100-700 characters, a char tokenizer, shards of 1,500 tokens."""
    root = tmp_path_factory.mktemp("cut")
    texts = [
        f"Doc {i}. {text[: 100 + (i * 37) % 600]}" for i, text in enumerate(play_documents[:40])
    ]
    CharTokenizer.train(texts).save(root / "tok.json")
    write_jsonl(root / "all.jsonl", [{"text": t} for t in texts])
    _tokenize(root / "all.jsonl", root / "tok.json", root / "tokens")
    return root, texts


def _tokenize(source: Path, tokenizer: Path, out: Path):
    return tokenize_to_shards(
        [source], tokenizer, out, val_fraction=VAL, shard_tokens=SHARD_TOKENS
    )[0]


def _splits(texts: list[str]) -> dict[str, list[int]]:
    """Record numbers of each split's documents, in stream order."""
    found: dict[str, list[int]] = {"train": [], "val": []}
    for number, text in enumerate(texts):
        found["val" if is_validation(text, VAL) else "train"].append(number)
    return found


def _expected(root: Path, texts: list[str], ordinals: dict, out: Path):
    splits = _splits(texts)
    dropped = {splits[split][o] for split, chosen in ordinals.items() for o in chosen}
    write_jsonl(out / "kept.jsonl", [{"text": t} for i, t in enumerate(texts) if i not in dropped])
    return _tokenize(out / "kept.jsonl", root / "tok.json", out / "tokens")


def _shards(manifest) -> dict[str, tuple[str, str, int]]:
    return {s.path: (s.split, s.sha256, s.num_tokens) for s in manifest.shards}


@pytest.mark.parametrize(
    "choose",
    [
        pytest.param(lambda n: {"train": [n["train"] // 2]}, id="middle-of-train"),
        pytest.param(lambda n: {"train": [0], "val": [0]}, id="first-of-both"),
        pytest.param(lambda n: {"train": [n["train"] - 1], "val": [n["val"] - 1]}, id="last"),
        pytest.param(
            lambda n: {"train": [1, 2, n["train"] // 2, n["train"] - 3], "val": [1, n["val"] - 2]},
            id="several-in-several-shards",
        ),
    ],
)
def test_a_cut_equals_re_tokenizing_without_the_documents(corpus, tmp_path, choose):
    root, texts = corpus
    source = load_manifest(root / "tokens")
    assert len(source.shards_for("train")) >= 4 and len(source.shards_for("val")) >= 2
    counts = {split: len(numbers) for split, numbers in _splits(texts).items()}
    ordinals = choose(counts)
    cut = cut_documents(root / "tokens", tmp_path / "cut", ordinals)
    expected = _expected(root, texts, ordinals, tmp_path / "redo")
    result = load_manifest(tmp_path / "cut", verify_checksums=True)
    assert _shards(result) == _shards(expected)
    assert result.splits == expected.splits
    assert (
        result.metadata["documents"]
        == expected.metadata["documents"]
        == 40 - sum(len(o) for o in ordinals.values())
    )
    assert cut.documents_removed == {split: len(o) for split, o in ordinals.items()}
    before = sum(source.num_tokens(s) for s in ("train", "val"))
    after = sum(result.num_tokens(s) for s in ("train", "val"))
    assert cut.tokens_removed == before - after > 0
    # The shards before a split's first cut are the old files themselves, not copies.
    for path in cut.unchanged:
        assert os.stat(root / "tokens" / path).st_ino == os.stat(tmp_path / "cut" / path).st_ino
    assert set(cut.affected) | set(cut.unchanged) == {s.path for s in source.shards}
    assert (tmp_path / "cut" / "tokenizer.json").read_bytes() == (
        root / "tokens" / "tokenizer.json"
    ).read_bytes()


def test_a_split_without_erased_documents_is_reused_whole(corpus, tmp_path):
    root, _ = corpus
    cut = cut_documents(root / "tokens", tmp_path / "cut", {"train": [5]})
    source = load_manifest(root / "tokens")
    assert {s.path for s in source.shards_for("val")} <= set(cut.unchanged)
    assert cut.affected and all(p.startswith("train_") for p in cut.affected)
    assert not [p for p in os.listdir(tmp_path / "cut") if p.startswith(".")]  # no temp files


def test_an_end_of_text_inside_a_text_refuses_the_cut(tmp_path, play_documents):
    texts = [play_documents[0][:300], f"see <|endoftext|> here {play_documents[1][:200]}"]
    CharTokenizer.train(texts).save(tmp_path / "tok.json")
    write_jsonl(tmp_path / "all.jsonl", [{"text": t} for t in texts])
    _tokenize(tmp_path / "all.jsonl", tmp_path / "tok.json", tmp_path / "tokens")
    with pytest.raises(CutNotExact, match="end-of-text tokens for"):
        cut_documents(tmp_path / "tokens", tmp_path / "cut", {"train": [0]})
    assert not (tmp_path / "cut").exists()


def test_ordinals_past_the_end_are_refused(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(ValueError, match="no document 999"):
        cut_documents(root / "tokens", tmp_path / "cut", {"val": [999]})


def test_a_vocabulary_that_learnt_the_subject_is_found(tmp_path, play_documents):
    texts = [t[:400] for t in play_documents[:20]] + ["Bartholomew Quince wrote"] * 40
    BPETokenizer.train(texts, vocab_size=400).save(tmp_path / "bpe.json")
    path = tmp_path / "bpe.json"
    assert tokenizer_subject_tokens(path, ["Bartholomew.Quince@example.org"]) > 0
    assert tokenizer_subject_tokens(path, ["BARTHOLOMEW"]) > 0
    assert tokenizer_subject_tokens(path, ["zed@example.org", "CUST-000042"]) == 0
    CharTokenizer.train(texts).save(tmp_path / "char.json")
    assert tokenizer_subject_tokens(tmp_path / "char.json", ["Bartholomew"]) == 0


def test_the_manifest_keeps_the_shard_order(corpus, tmp_path):
    root, _ = corpus
    cut_documents(root / "tokens", tmp_path / "cut", {"train": [3], "val": [2]})
    old = [s["path"] for s in json.loads((root / "tokens" / "manifest.json").read_text())["shards"]]
    new = [
        s["path"] for s in json.loads((tmp_path / "cut" / "manifest.json").read_text())["shards"]
    ]
    assert new == [p for p in old if p in new]


def test_a_span_that_does_not_hold_its_text_refuses_the_cut(corpus, tmp_path):
    root, texts = corpus
    first_train = _splits(texts)["train"][0]
    cut_documents(
        root / "tokens", tmp_path / "ok", {"train": [0]}, texts={"train": [texts[first_train]]}
    )
    with pytest.raises(CutNotExact, match="not where its place"):
        cut_documents(
            root / "tokens", tmp_path / "bad", {"train": [1]}, texts={"train": [texts[first_train]]}
        )
    assert not (tmp_path / "bad" / "manifest.json").exists()


@pytest.mark.parametrize(
    "record",
    [
        {"text": "plain", "user": "u-1"},
        {"user": "u-1", "text": 'quotes " and \\ and \u00e9\u4e2d'},
        {"text": "braces {like} this", "meta": {"text": "nested"}},
        {"meta": {"text": "nested first"}, "text": "top"},
        {"text": 42},
    ],
)
def test_the_fast_text_reader_reads_what_json_reads(record):
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    expected = record["text"] if isinstance(record["text"], str) else ""
    assert record_text_reader("text")(line) == expected
