"""Client-side multipart upload on both backends: parts sent to presigned URLs, then assembled.

On S3 the parts go over real HTTP to the moto server; on the local store they go through
`upload_part`, which is what the web app's presigned-URL handler calls.
"""

import hashlib
from urllib.parse import urlsplit

import pytest
import requests

from workers.storage import ObjectExistsError, ObjectNotFoundError, StorageError

PART = 5 * 1024 * 1024


def _send_part(store, key, upload_id, number, data: bytes) -> str:
    url = store.presigned_part_url(key, upload_id, number)
    if store.backend == "s3":
        response = requests.put(url, data=data, timeout=30)
        assert response.status_code == 200, response.text
        return response.headers["ETag"]
    token = urlsplit(url).path.rsplit("/", 1)[-1]
    assert store.is_part_token(token)
    key_, upload_, number_ = store.verify_presigned_part_token(token)
    import io

    return store.upload_part(key_, upload_, number_, io.BytesIO(data), len(data))


def test_parts_assemble_into_one_object_with_its_sha256(store, leftovers):
    data = b"a" * PART + b"b" * PART + b"the end\n"
    key = "projects/1/datasets/1/v1/upload/00000"
    upload_id = store.multipart_create(key)
    pieces = [data[:PART], data[PART : 2 * PART], data[2 * PART :]]
    # Sent out of order, as parallel clients do.
    etags = {n: _send_part(store, key, upload_id, n, pieces[n - 1]) for n in (2, 3, 1)}
    stored = store.multipart_complete(key, upload_id, list(etags.items()))
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(key) == data
    assert store.stat(key).sha256 == stored.sha256
    assert [info.key for info in store.list("projects/1/")] == [key]


def test_abort_leaves_nothing_and_is_idempotent(store, leftovers):
    key = "projects/1/datasets/1/v2/upload/00000"
    upload_id = store.multipart_create(key)
    _send_part(store, key, upload_id, 1, b"partial")
    store.multipart_abort(key, upload_id)
    store.multipart_abort(key, upload_id)
    assert not store.exists(key)
    assert leftovers() == []
    with pytest.raises((ObjectNotFoundError, StorageError)):
        store.multipart_complete(key, upload_id, [(1, "whatever")])


def test_wrong_etag_or_missing_part_is_refused(store):
    key = "projects/1/datasets/1/v3/upload/00000"
    upload_id = store.multipart_create(key)
    _send_part(store, key, upload_id, 1, b"only part")
    with pytest.raises(StorageError):
        store.multipart_complete(key, upload_id, [(1, "0" * 32)])
    with pytest.raises(StorageError):
        store.multipart_complete(key, upload_id, [(1, "x"), (2, "y")])
    assert not store.exists(key)


def test_an_existing_key_cannot_be_uploaded_again(store):
    store.put_bytes("projects/1/x", b"1")
    with pytest.raises(ObjectExistsError):
        store.multipart_create("projects/1/x")


def test_open_uploads_are_listed_until_completed_or_aborted(store):
    from datetime import UTC, datetime, timedelta

    kept = store.multipart_create("projects/1/datasets/1/v4/upload/00000")
    dropped = store.multipart_create("projects/1/datasets/1/v4/upload/00001")
    done = store.multipart_create("projects/2/datasets/1/v1/upload/00000")
    _send_part(store, "projects/2/datasets/1/v1/upload/00000", done, 1, b"whole")
    etag = _send_part(store, "projects/2/datasets/1/v1/upload/00000", done, 1, b"whole")
    store.multipart_complete("projects/2/datasets/1/v1/upload/00000", done, [(1, etag)])
    store.multipart_abort("projects/1/datasets/1/v4/upload/00001", dropped)
    listed = list(store.multipart_list("projects/"))
    assert [(u.key, u.upload_id) for u in listed] == [
        ("projects/1/datasets/1/v4/upload/00000", kept)
    ]
    if store.backend == "local":  # moto answers a fixed Initiated date (2010-11-10)
        assert abs(listed[0].initiated - datetime.now(UTC)) < timedelta(minutes=1)
    assert list(store.multipart_list("projects/2/")) == []
    # Folder prefixes, as everywhere: projects/1 does not reach projects/10.
    assert list(store.multipart_list("projects/10/")) == []


def test_listing_open_uploads_pages_through_many(s3_store, monkeypatch):
    """More uploads than one ListMultipartUploads page (the SDK drops the upload-id marker)."""
    original = s3_store.client._list_multipart_uploads
    monkeypatch.setattr(
        s3_store.client,
        "_list_multipart_uploads",
        lambda *a, **kw: original(*a, **{**kw, "max_uploads": 2}),
    )
    ids = {s3_store.multipart_create(f"projects/1/up/{n:03d}") for n in range(5)}
    assert {u.upload_id for u in s3_store.multipart_list("projects/")} == ids


def test_a_failed_local_create_leaves_no_upload_folder(local_store, monkeypatch):
    from pathlib import Path

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError):
        local_store.multipart_create("projects/1/x")
    monkeypatch.undo()
    assert not (local_store.bucket_dir / ".multipart").exists()


def test_deleting_a_key_removes_what_a_killed_local_writer_left(local_store):
    """A writer killed mid-put leaves only its hidden temp file; deleting the key (what
    the platform's reapers do) removes it, and never another key's temp file."""
    folder = local_store.bucket_dir / "projects" / "1" / "uploads"
    folder.mkdir(parents=True)
    dead = folder / ".abc.k3j_x9q2.tmp"
    dead_sidecar = folder / "..abc.meta.json.a1b2c3d4.tmp"
    other = folder / ".abc.meta.json.z9y8x7w6.tmp"  # the temp of key "abc.meta.json"
    neighbour = folder / ".abcd.q1w2e3r4.tmp"
    for path in (dead, dead_sidecar, other, neighbour):
        path.write_bytes(b"half")
    assert local_store.delete("projects/1/uploads/abc") == 0
    assert not dead.exists() and not dead_sidecar.exists()
    assert other.exists() and neighbour.exists()


def test_a_part_arriving_while_the_upload_is_aborted_is_not_found(local_store):
    """The part's folder vanishes under it: a clear 'not found' (the part URL answers 404),
    and nothing is left behind."""
    import io

    key = "projects/1/datasets/1/v5/upload/00000"
    upload_id = local_store.multipart_create(key)

    class AbortedMidway(io.RawIOBase):
        sent = False

        def readable(self):
            return True

        def readinto(self, buffer):
            if self.sent:
                return 0
            local_store.multipart_abort(key, upload_id)  # another request gives up
            self.sent = True
            buffer[:4] = b"part"
            return 4

    with pytest.raises(ObjectNotFoundError, match="ended while part 1 arrived"):
        local_store.upload_part(key, upload_id, 1, AbortedMidway(), 4)
    assert list(local_store.bucket_dir.rglob("*")) == []
