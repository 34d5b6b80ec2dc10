"""What only the S3 backend has: bucket versions, tags, and an endpoint that can fail."""

from __future__ import annotations

import socket

import pytest
from minio.error import S3Error

from tests.s3server import ACCESS_KEY, SECRET_KEY
from workers.storage import S3ObjectStore, StorageError


def _versions(s3_client, bucket: str, key: str | None = None) -> list[str]:
    listing = s3_client.list_object_versions(Bucket=bucket)
    entries = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
    return [e["VersionId"] for e in entries if key is None or e["Key"] == key]


def test_ensure_bucket_turns_versioning_on_and_can_be_repeated(s3_store, s3_client):
    s3_store.ensure_bucket()

    assert s3_client.get_bucket_versioning(Bucket=s3_store.bucket)["Status"] == "Enabled"


def test_put_returns_the_version_it_wrote(s3_store):
    stored = s3_store.put_bytes("projects/1/a", b"data")

    assert stored.version_id
    assert s3_store.stat("projects/1/a").version_id == stored.version_id


def test_delete_removes_every_version_and_delete_marker(s3_store, s3_client):
    key = "projects/1/subject-data.jsonl"
    first = s3_store.put_bytes(key, b"version 1")
    # Another writer (or a racing put) left more versions and a delete marker behind.
    s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"version 2")
    s3_client.delete_object(Bucket=s3_store.bucket, Key=key)
    s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"version 3")
    s3_store.put_bytes("projects/1/subject-data.jsonl-other", b"not this one")
    assert len(_versions(s3_client, s3_store.bucket, key)) == 4

    assert s3_store.delete(key) == 4

    assert _versions(s3_client, s3_store.bucket, key) == []
    assert s3_store.get_bytes("projects/1/subject-data.jsonl-other") == b"not this one"
    with pytest.raises(StorageError):
        s3_store.get_bytes(key, version_id=first.version_id)


def test_delete_prefix_removes_every_version_under_the_folder(s3_store, s3_client):
    for key in ["projects/1/a", "projects/1/b/c"]:
        s3_store.put_bytes(key, b"one")
        s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"two")
    s3_store.put_bytes("projects/10/a", b"keep")

    assert s3_store.delete_prefix("projects/1") == 4

    assert _versions(s3_client, s3_store.bucket) == _versions(
        s3_client, s3_store.bucket, "projects/10/a"
    )
    assert len(_versions(s3_client, s3_store.bucket)) == 1


def test_multipart_object_whose_sha256_cannot_be_tagged_is_taken_back(s3_store, s3_client):
    def refuse(*args, **kwargs):
        raise S3Error(
            response=None,
            code="InternalError",
            message="tagging is broken",
            resource=None,
            request_id=None,
            host_id=None,
        )

    s3_store.client.set_object_tags = refuse

    with pytest.raises(StorageError, match="InternalError"):
        s3_store.put_bytes("projects/1/big", b"x" * (s3_store.part_size + 1))

    assert _versions(s3_client, s3_store.bucket) == []


def test_missing_bucket_error_says_how_to_create_it(s3_endpoint):
    store = S3ObjectStore(
        s3_endpoint, "never-created", access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )

    with pytest.raises(StorageError, match="NoSuchBucket.*ensure_bucket"):
        store.put_bytes("projects/1/a", b"data")


def test_unreachable_endpoint_fails_with_the_endpoint_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: connection refused at once.
    store = S3ObjectStore(
        f"127.0.0.1:{port}", "bucket", access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )

    with pytest.raises(StorageError, match=f"S3 endpoint 127.0.0.1:{port}"):
        store.stat("projects/1/a")
