"""The object-store contract, run on the local and the S3 backend alike."""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Iterator

import pytest

from tests.s3server import MIN_PART_SIZE
from workers.storage import (
    InvalidKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
    S3ObjectStore,
    StorageError,
    StreamLengthError,
)

# Three parts on S3 (two full 5 MiB parts and a tail), with an odd size on purpose.
MULTIPART_SIZE = 2 * MIN_PART_SIZE + 12_345


def pattern(size: int) -> bytes:
    """Bytes that differ from part to part, so a swapped or repeated part changes the hash."""
    return random.Random(size).randbytes(size)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_put_then_get_roundtrips_bytes_with_sha256(store):
    data = b"hello object store\n" * 100

    stored = store.put_bytes("projects/1/datasets/a.txt", data, content_type="text/plain")

    assert stored.key == "projects/1/datasets/a.txt"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes("projects/1/datasets/a.txt") == data
    assert store.exists("projects/1/datasets/a.txt")


def test_stream_of_unknown_length_is_stored_whole_with_its_sha256(store):
    data = pattern(MULTIPART_SIZE)

    stored = store.put_stream("projects/1/big.bin", chunks(data))

    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    info = store.stat("projects/1/big.bin")
    assert info.size == len(data)
    assert info.sha256 == stored.sha256
    if isinstance(store, S3ObjectStore):
        # S3 etags of multipart objects end in -<parts>: it really went up in parts.
        assert info.etag.endswith("-3")
    read = hashlib.sha256()
    for chunk in store.iter_chunks("projects/1/big.bin", chunk_size=1024 * 1024):
        assert len(chunk) <= 1024 * 1024
        read.update(chunk)
    assert read.hexdigest() == stored.sha256


def test_file_object_with_declared_length_is_stored_whole(store):
    data = pattern(MULTIPART_SIZE)

    stored = store.put_stream("projects/1/file.bin", io.BytesIO(data), length=len(data))

    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    with store.open_stream("projects/1/file.bin") as stream:
        assert hashlib.sha256(stream.read()).hexdigest() == stored.sha256


def test_stat_reports_size_content_type_and_metadata(store):
    stored = store.put_bytes(
        "projects/2/manifest.json",
        b'{"shards": []}',
        content_type="application/json",
        metadata={"Dataset-Version": "3"},
    )

    info = store.stat("projects/2/manifest.json")

    assert info.key == "projects/2/manifest.json"
    assert info.size == 14
    assert info.content_type == "application/json"
    assert info.metadata["dataset-version"] == "3"
    assert info.sha256 == stored.sha256
    assert info.last_modified.tzinfo is not None


def test_put_refuses_to_overwrite_a_key(store):
    store.put_bytes("projects/1/once", b"first")

    with pytest.raises(ObjectExistsError, match="projects/1/once already exists"):
        store.put_bytes("projects/1/once", b"second")

    assert store.get_bytes("projects/1/once") == b"first"


def test_list_stays_inside_the_folder_in_key_order(store):
    for key in [
        "projects/1/b.txt",
        "projects/1/a/deep.txt",
        "projects/1/a.txt",
        "projects/10/other.txt",
        "projects/1-x/other.txt",
    ]:
        store.put_bytes(key, key.encode())

    listed = [info.key for info in store.list("projects/1")]
    top_level = [info.key for info in store.list("projects/1/", recursive=False)]

    assert listed == ["projects/1/a.txt", "projects/1/a/deep.txt", "projects/1/b.txt"]
    assert top_level == ["projects/1/a.txt", "projects/1/b.txt"]
    sizes = {info.key: info.size for info in store.list("projects/10")}
    assert sizes == {"projects/10/other.txt": len("projects/10/other.txt")}
    assert list(store.list("projects/404")) == []


def test_delete_removes_the_object_and_can_be_repeated(store, leftovers):
    store.put_bytes("projects/1/gone", b"bye")
    store.put_bytes("projects/1/gone-not", b"stay")

    assert store.delete("projects/1/gone") == 1
    assert store.delete("projects/1/gone") == 0

    assert not store.exists("projects/1/gone")
    assert store.get_bytes("projects/1/gone-not") == b"stay"
    with pytest.raises(ObjectNotFoundError):
        store.stat("projects/1/gone")
    # Nothing of the deleted object remains (no sidecar, no older version): only the survivor.
    remaining = leftovers()
    assert remaining and all("gone-not" in item for item in remaining), remaining


def test_delete_prefix_removes_one_folder_only(store):
    for key in ["projects/1/a", "projects/1/x/b", "projects/1/x/y/c", "projects/10/keep"]:
        store.put_bytes(key, b"data")

    assert store.delete_prefix("projects/1") == 3

    assert list(store.list("projects/1")) == []
    assert [info.key for info in store.list()] == ["projects/10/keep"]
    assert store.delete_prefix("projects/1/") == 0


def test_delete_prefix_refuses_to_empty_the_bucket(store):
    store.put_bytes("projects/1/a", b"data")

    with pytest.raises(InvalidKeyError, match="refusing to empty the whole bucket"):
        store.delete_prefix("")

    assert store.exists("projects/1/a")


def test_missing_objects_raise_not_found_naming_the_key(store):
    store.put_bytes("projects/1/present", b"x")

    with pytest.raises(ObjectNotFoundError, match="projects/1/absent"):
        store.stat("projects/1/absent")
    with pytest.raises(ObjectNotFoundError):
        store.open_stream("projects/1/absent")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("projects/1/absent")
    with pytest.raises(ObjectNotFoundError):
        list(store.iter_chunks("projects/1/absent"))
    assert not store.exists("projects/1/absent")


def test_get_bytes_refuses_objects_that_must_be_streamed(store):
    store.put_bytes("projects/1/big", b"x" * 100)

    with pytest.raises(StorageError, match="stream it with iter_chunks"):
        store.get_bytes("projects/1/big", max_size=99)


def _breaks_after(data: bytes, at: int) -> Iterator[bytes]:
    sent = 0
    for chunk in chunks(data):
        if sent >= at:
            raise RuntimeError("upload source went away")
        yield chunk
        sent += len(chunk)
    raise AssertionError("the stream should have broken before its end")


@pytest.mark.parametrize(
    "break_at", [100_000, MIN_PART_SIZE + 100_000], ids=["one-part", "multipart"]
)
def test_stream_raising_midway_leaves_no_object(store, leftovers, break_at):
    data = pattern(MULTIPART_SIZE)

    with pytest.raises(RuntimeError, match="upload source went away"):
        store.put_stream("projects/1/broken", _breaks_after(data, break_at))

    assert not store.exists("projects/1/broken")
    assert leftovers() == []


def _client_threads() -> set[threading.Thread]:
    # The in-process moto server serves each connection from a thread; those come and go.
    return {t for t in threading.enumerate() if "process_request_thread" not in t.name}


def test_failed_multipart_puts_leave_no_threads_behind(store):
    data = pattern(MULTIPART_SIZE)
    threads_before = _client_threads()

    for attempt in range(3):
        with pytest.raises(RuntimeError):
            store.put_stream(f"projects/1/broken-{attempt}", _breaks_after(data, MIN_PART_SIZE + 1))

    assert _client_threads() == threads_before


@pytest.mark.parametrize(
    ("actual", "declared"),
    [
        (1000, 2000),
        (2000, 1000),
        (MULTIPART_SIZE, MULTIPART_SIZE + 1),
        (MULTIPART_SIZE, MULTIPART_SIZE - 1),
        (MULTIPART_SIZE, MIN_PART_SIZE),
    ],
    ids=["short", "long", "multipart-short", "multipart-long", "multipart-far-too-long"],
)
def test_wrong_declared_length_leaves_no_object(store, leftovers, actual, declared):
    with pytest.raises(StreamLengthError, match="declared length"):
        store.put_stream("projects/1/liar", io.BytesIO(pattern(actual)), length=declared)

    assert not store.exists("projects/1/liar")
    assert leftovers() == []


@pytest.mark.parametrize("length", [-1, 1.5, True])
def test_nonsense_declared_length_is_refused(store, length):
    with pytest.raises(StreamLengthError, match="non-negative integer"):
        store.put_stream("projects/1/x", io.BytesIO(b"x"), length=length)


def test_put_stream_wants_a_stream_not_bytes_or_text(store):
    with pytest.raises(TypeError, match="use put_bytes"):
        store.put_stream("projects/1/x", b"raw bytes")
    with pytest.raises(TypeError, match="not str"):
        store.put_stream("projects/1/x", "some text")


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"sha256": "0" * 64}, "reserved"),
        ({"bad name": "x"}, "letters, digits and '-'"),
        ({"note": "line\r\nX-Injected: 1"}, "printable ASCII"),
    ],
)
def test_bad_metadata_is_refused_before_anything_is_written(store, leftovers, metadata, problem):
    with pytest.raises(StorageError, match=problem):
        store.put_bytes("projects/1/x", b"data", metadata=metadata)

    assert leftovers() == []


def test_bad_content_type_is_refused(store):
    with pytest.raises(StorageError, match="content type"):
        store.put_bytes("projects/1/x", b"data", content_type="text/plain\r\nX-Evil: 1")
