"""Token shard format: atomic writing, verification that names the bad file, resumable loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.data.shards import ShardError, ShardWriter, TokenLoader, dtype_for_vocab, load_manifest


def _write(folder, documents, *, vocab_size=50, shard_tokens=40, val=()):
    with ShardWriter(folder, vocab_size=vocab_size, eot_id=0, shard_tokens=shard_tokens) as writer:
        writer.add_many(documents, split="train")
        writer.add_many(val, split="val")
    return writer.manifest


def test_documents_are_preceded_by_end_of_text_and_cut_into_shards(tmp_path):
    docs = [list(range(1, 30)), list(range(5, 40))]
    manifest = _write(tmp_path, docs, val=[[7, 8, 9]])
    train = manifest.shards_for("train")
    assert [s.num_tokens for s in train] == [40, 26]
    stream = np.concatenate([np.fromfile(tmp_path / s.path, dtype="<u2") for s in train])
    assert stream.tolist() == [0, *docs[0], 0, *docs[1]]
    assert manifest.splits["train"] == {"num_tokens": 66, "num_documents": 2}
    loaded = load_manifest(tmp_path, verify_checksums=True)
    assert loaded.num_tokens("val") == 4 and loaded.vocab_size == 50


def test_large_vocabularies_use_uint32():
    assert dtype_for_vocab(65536).itemsize == 2
    assert dtype_for_vocab(65537).itemsize == 4


def test_interrupted_writer_leaves_nothing_that_loads(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, vocab_size=50, eot_id=0, shard_tokens=10) as writer:
            writer.add(list(range(1, 40)))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ShardError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_out_of_vocabulary_ids_are_refused(tmp_path):
    writer = ShardWriter(tmp_path, vocab_size=50, eot_id=0)
    with pytest.raises(ValueError, match="token id 77 is outside the vocabulary of size 50"):
        writer.add([1, 77])


def test_missing_and_corrupt_shards_are_named(tmp_path):
    _write(tmp_path, [list(range(1, 49))] * 3)
    (tmp_path / "train_00001.bin").unlink()
    with pytest.raises(ShardError, match="train_00001.bin listed in the manifest is missing"):
        load_manifest(tmp_path)
    data = bytearray((tmp_path / "train_00000.bin").read_bytes())
    data[3] ^= 0xFF
    (tmp_path / "train_00000.bin").write_bytes(bytes(data))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["shards"] = [s for s in manifest["shards"] if s["path"] != "train_00001.bin"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    load_manifest(tmp_path)  # same size: only the checksum can tell
    with pytest.raises(ShardError, match="train_00000.bin is corrupt: its sha256"):
        load_manifest(tmp_path, verify_checksums=True)
    (tmp_path / "train_00000.bin").write_bytes(bytes(data[:-2]))
    with pytest.raises(ShardError, match="train_00000.bin is corrupt: 78 bytes"):
        load_manifest(tmp_path)


def test_windows_are_shifted_targets_across_shard_boundaries(tmp_path):
    manifest = _write(tmp_path, [list(range(1, 49))] * 4, shard_tokens=17)
    loader = TokenLoader(manifest, "train", batch_size=4, block_size=8, order="sequential")
    stream = loader._read(0, loader.num_tokens)
    for _ in range(12):  # passes shard boundaries and wraps around
        x, y = loader.next_batch()
        assert x.shape == y.shape == (4, 8)
        assert (x[:, 1:] == y[:, :-1]).all()
        for row_x, row_y in zip(x, y, strict=True):
            start = next(i for i in range(len(stream) - 8) if (stream[i : i + 8] == row_x).all())
            assert stream[start + 8] == row_y[-1]
    assert loader.epoch >= 1


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_loader_resumes_with_the_very_next_batch(tmp_path, order):
    manifest = _write(tmp_path, [list(range(1, 49))] * 5)
    straight = TokenLoader(manifest, "train", batch_size=3, block_size=8, seed=7, order=order)
    expected = [straight.next_batch()[0] for _ in range(6)]
    first = TokenLoader(manifest, "train", batch_size=3, block_size=8, seed=7, order=order)
    got = [first.next_batch()[0] for _ in range(3)]
    state = json.loads(json.dumps(first.state_dict()))
    second = TokenLoader(manifest, "train", batch_size=3, block_size=8, seed=999, order=order)
    second.load_state_dict(state)
    got += [second.next_batch()[0] for _ in range(3)]
    assert all((a == b).all() for a, b in zip(expected, got, strict=True))


def test_ranks_read_disjoint_rows_of_the_single_process_batch(tmp_path):
    manifest = _write(tmp_path, [list(range(1, 49))] * 5)
    single = TokenLoader(manifest, "train", batch_size=4, block_size=8, seed=3)
    ranks = [
        TokenLoader(manifest, "train", batch_size=2, block_size=8, seed=3, rank=r, world_size=2)
        for r in range(2)
    ]
    for _ in range(3):
        whole = single.next_batch()[0]
        parts = np.concatenate([loader.next_batch()[0] for loader in ranks])
        assert (whole == parts).all()
