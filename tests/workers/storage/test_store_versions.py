"""Every stored version of an object: listed, read and deleted by version id.

Versioned buckets keep an overwritten object as an old version and turn a plain delete
into a delete marker; erasure is only true once those are gone too.
"""

from __future__ import annotations

import pytest
import urllib3

from workers.storage import NULL_VERSION_ID, StorageError
from workers.storage.retrying import RetryingObjectStore


def _three_states(s3_store, s3_client, key: str) -> list[str]:
    """Two versions of `key`, then a delete marker (what a versioned bucket keeps)."""
    first = s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"first alice@example.com")
    second = s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"second version")
    marker = s3_client.delete_object(Bucket=s3_store.bucket, Key=key)
    return [first["VersionId"], second["VersionId"], marker["VersionId"]]


def test_local_store_lists_one_null_version_per_object(local_store):
    local_store.put_bytes("projects/1/a/x.jsonl", b"abc")
    local_store.put_bytes("projects/1/a/y.jsonl", b"defg")
    local_store.put_bytes("projects/1/a-2/z.jsonl", b"h")

    versions = local_store.list_versions("projects/1/a/")

    assert [(v.key, v.version_id, v.size, v.is_latest) for v in versions] == [
        ("projects/1/a/x.jsonl", NULL_VERSION_ID, 3, True),
        ("projects/1/a/y.jsonl", NULL_VERSION_ID, 4, True),
    ]
    assert [v.key for v in local_store.list_versions("projects/1/a/x.jsonl")] == [
        "projects/1/a/x.jsonl"
    ]
    with local_store.get_version("projects/1/a/y.jsonl", NULL_VERSION_ID) as stream:
        assert stream.read() == b"defg"


def test_delete_all_versions_is_idempotent_on_both_backends(store):
    stored = store.put_bytes("projects/1/a/x.jsonl", b"abc")
    store.put_bytes("projects/1/a/x.jsonl-2", b"keep me")

    deleted = store.delete_all_versions("projects/1/a/x.jsonl")

    assert deleted == [stored.version_id or NULL_VERSION_ID]
    assert store.list_versions("projects/1/a/x.jsonl") == []
    assert store.delete_all_versions("projects/1/a/x.jsonl") == []
    # The key's listing prefix also matches `x.jsonl-2`: that one is untouched.
    assert store.get_bytes("projects/1/a/x.jsonl-2") == b"keep me"


def test_s3_lists_old_versions_and_delete_markers_and_deletes_them_all(s3_store, s3_client):
    key = "projects/1/raw/data.jsonl"
    first, second, marker = _three_states(s3_store, s3_client, key)
    s3_store.put_bytes("projects/1/raw/other.jsonl", b"other")

    versions = {v.version_id: v for v in s3_store.list_versions(key)}

    assert set(versions) == {first, second, marker}
    assert versions[marker].is_delete_marker and versions[marker].is_latest
    assert not versions[first].is_delete_marker and versions[first].size == 23
    # The old version still reads, whole, ranged and streamed, though the key is "deleted".
    assert not s3_store.exists(key)
    assert s3_store.get_range(key, 6, 5, version_id=first) == b"alice"
    with s3_store.get_version(key, first) as stream:
        assert stream.read() == b"first alice@example.com"
    assert len(s3_store.list_versions("projects/1/raw/")) == 4

    deleted = s3_store.delete_all_versions(key)

    assert sorted(deleted) == sorted([first, second, marker])
    assert s3_store.list_versions(key) == []
    listing = s3_client.list_object_versions(Bucket=s3_store.bucket, Prefix="projects/1/")
    assert [v["Key"] for v in listing.get("Versions", [])] == ["projects/1/raw/other.jsonl"]
    assert not listing.get("DeleteMarkers")
    assert s3_store.delete_all_versions(key) == []


def test_a_store_failing_mid_delete_raises_and_a_retry_finishes(s3_store, s3_client, monkeypatch):
    key = "projects/1/raw/data.jsonl"
    ids = _three_states(s3_store, s3_client, key)
    real_remove = s3_store.client.remove_objects

    def remove_one_then_break(bucket, objects):
        first = next(iter(objects))
        yield from real_remove(bucket, [first])
        raise urllib3.exceptions.ProtocolError("connection reset mid-way")

    monkeypatch.setattr(s3_store.client, "remove_objects", remove_one_then_break)
    with pytest.raises(StorageError, match="delete the versions"):
        s3_store.delete_all_versions(key)
    assert len(s3_store.list_versions(key)) == 2
    monkeypatch.setattr(s3_store.client, "remove_objects", real_remove)

    assert len(s3_store.delete_all_versions(key)) == 2
    assert s3_store.list_versions(key) == []
    assert len(ids) == 3


def test_the_retrying_store_finishes_a_broken_delete_and_reports_every_id(
    s3_store, s3_client, monkeypatch
):
    key = "projects/1/raw/data.jsonl"
    ids = _three_states(s3_store, s3_client, key)
    real_remove = s3_store.client.remove_objects
    calls = []

    def break_once(bucket, objects):
        calls.append(1)
        if len(calls) == 1:
            first = next(iter(objects))
            yield from real_remove(bucket, [first])
            raise urllib3.exceptions.ProtocolError("connection reset mid-way")
        yield from real_remove(bucket, objects)

    monkeypatch.setattr(s3_store.client, "remove_objects", break_once)
    store = RetryingObjectStore(s3_store, patience_seconds=5, first_delay_seconds=0.01)

    assert sorted(store.delete_all_versions(key)) == sorted(ids)
    assert store.list_versions(key) == []
    assert len(calls) == 2
