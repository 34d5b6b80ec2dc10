"""Ranged reads (`get_range`), on the local and the S3 backend alike."""

from __future__ import annotations

import pytest

from workers.storage import ObjectNotFoundError, StorageError
from workers.storage.retrying import RetryingObjectStore

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def test_a_range_returns_exactly_those_bytes(store):
    store.put_bytes("projects/1/inference/a.jsonl.gz", DATA)

    assert store.get_range("projects/1/inference/a.jsonl.gz", 0, 1) == DATA[:1]
    assert store.get_range("projects/1/inference/a.jsonl.gz", 300, 1000) == DATA[300:1300]
    assert store.get_range("projects/1/inference/a.jsonl.gz", len(DATA) - 7, 7) == DATA[-7:]


def test_a_range_past_the_end_is_an_error_not_a_short_answer(store):
    store.put_bytes("projects/1/a", DATA)

    with pytest.raises(StorageError, match="shorter"):
        store.get_range("projects/1/a", len(DATA) - 5, 10)
    with pytest.raises(StorageError):
        store.get_range("projects/1/a", len(DATA) + 100, 10)


def test_a_range_of_a_missing_object_is_not_found(store):
    with pytest.raises(ObjectNotFoundError):
        store.get_range("projects/1/missing", 0, 10)


@pytest.mark.parametrize("offset,length", [(-1, 5), (0, 0), (0, -3), (True, 4), (1.5, 4)])
def test_a_malformed_range_is_refused(store, offset, length):
    store.put_bytes("projects/1/a", DATA)

    with pytest.raises(StorageError):
        store.get_range("projects/1/a", offset, length)


def test_the_retrying_store_passes_ranges_through(store):
    store.put_bytes("projects/1/a", DATA)
    retrying = RetryingObjectStore(store, patience_seconds=1)

    assert retrying.get_range("projects/1/a", 10, 20) == DATA[10:30]
    with pytest.raises(StorageError, match="shorter"):
        retrying.get_range("projects/1/a", len(DATA), 1)


def test_the_default_implementation_reads_through_the_stream(local_store):
    """A store that does not override get_range still answers (the ObjectStore default)."""
    local_store.put_bytes("projects/1/a", DATA)
    default = type(local_store).__mro__[1].get_range

    assert default(local_store, "projects/1/a", 5000, 123) == DATA[5000:5123]
    with pytest.raises(StorageError, match="shorter"):
        default(local_store, "projects/1/a", 10_200, 100)
