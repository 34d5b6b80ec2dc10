"""`copy`: a copy inside the store (server-side on S3), never over an existing key."""

from __future__ import annotations

import hashlib

import pytest

from tests.workers.storage.test_retrying import Blips, _refused, _retrying
from workers.storage import ObjectExistsError, ObjectNotFoundError

DATA = b"weights " * 5000


def test_copy_keeps_bytes_content_type_metadata_and_sha256(store):
    store.put_bytes(
        "projects/1/jobs/2/model.safetensors",
        DATA,
        content_type="application/x-safetensors",
        metadata={"job": "2"},
    )

    copied = store.copy("projects/1/jobs/2/model.safetensors", "projects/1/models/1/v1/w")

    assert copied.key == "projects/1/models/1/v1/w"
    assert copied.size == len(DATA)
    assert copied.sha256 == hashlib.sha256(DATA).hexdigest()
    assert store.get_bytes("projects/1/models/1/v1/w") == DATA
    info = store.stat("projects/1/models/1/v1/w")
    assert info.content_type == "application/x-safetensors"
    assert info.metadata["job"] == "2"
    assert info.sha256 == copied.sha256


def test_copy_is_independent_of_its_source(store):
    store.put_bytes("projects/1/a", DATA)
    store.copy("projects/1/a", "projects/1/b")

    store.delete("projects/1/a")

    assert store.get_bytes("projects/1/b") == DATA


def test_local_copy_is_a_real_file_not_a_hard_link(local_store):
    local_store.put_bytes("projects/1/a", DATA)
    local_store.copy("projects/1/a", "projects/1/b")

    source = local_store.bucket_dir / "projects/1/a"
    copy = local_store.bucket_dir / "projects/1/b"
    assert source.stat().st_ino != copy.stat().st_ino
    assert copy.stat().st_nlink == 1


def test_copy_refuses_an_existing_destination(store):
    store.put_bytes("projects/1/a", DATA)
    store.put_bytes("projects/1/b", b"other")

    with pytest.raises(ObjectExistsError, match="projects/1/b already exists"):
        store.copy("projects/1/a", "projects/1/b")

    assert store.get_bytes("projects/1/b") == b"other"


def test_copy_of_a_missing_object_says_not_found(store):
    with pytest.raises(ObjectNotFoundError):
        store.copy("projects/1/missing", "projects/1/b")
    assert not store.exists("projects/1/b")


def test_s3_copy_above_the_copy_object_limit_goes_in_parts(s3_store):
    """A big object (the limit lowered here) is copied by UploadPartCopy with its metadata
    and its sha256 tag set again."""
    s3_store.put_bytes("projects/1/big", DATA, content_type="text/plain", metadata={"a": "b"})
    s3_store.max_copy_object_size = 1024

    copied = s3_store.copy("projects/1/big", "projects/1/big-copy")

    assert copied.sha256 == hashlib.sha256(DATA).hexdigest()
    assert s3_store.get_bytes("projects/1/big-copy") == DATA
    info = s3_store.stat("projects/1/big-copy")
    assert info.sha256 == copied.sha256
    assert info.metadata["a"] == "b"
    assert info.content_type == "text/plain"


def test_retrying_copy_rides_out_blips(local_store):
    local_store.put_bytes("projects/1/a", DATA)
    blips = Blips(local_store, failures=2, methods=("copy",))

    copied = _retrying(blips).copy("projects/1/a", "projects/1/b")

    assert blips.calls["copy"] == 3
    assert copied.sha256 == hashlib.sha256(DATA).hexdigest()


def test_retrying_copy_whose_answer_was_lost_recognises_its_copy(local_store):
    """The first try copied, its answer was lost: the retry sees the same bytes, not a clash."""
    local_store.put_bytes("projects/1/a", DATA)

    class LostAnswer(Blips):
        def __getattr__(self, name):
            if name != "copy":
                return super().__getattr__(name)

            def copy(src, dst):
                self.calls["copy"] = self.calls.get("copy", 0) + 1
                result = self.inner.copy(src, dst)
                if self.calls["copy"] == 1:
                    raise _refused()
                return result

            return copy

    copied = _retrying(LostAnswer(local_store)).copy("projects/1/a", "projects/1/b")

    assert copied.size == len(DATA)
    assert local_store.get_bytes("projects/1/b") == DATA


def test_retrying_copy_does_not_retry_an_existing_destination(local_store):
    local_store.put_bytes("projects/1/a", DATA)
    local_store.put_bytes("projects/1/b", b"other")
    blips = Blips(local_store)

    with pytest.raises(ObjectExistsError):
        _retrying(blips).copy("projects/1/a", "projects/1/b")
    assert blips.calls["copy"] == 1
