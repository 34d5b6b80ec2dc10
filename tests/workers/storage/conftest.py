"""Both object-store backends behind one fixture, so every contract test runs on each.

`store` is a LocalObjectStore in tmp_path or an S3ObjectStore on its own versioned bucket
of the session's moto server (tests/s3server.py, real HTTP on loopback).
"""

from __future__ import annotations

import itertools

import pytest

from tests.s3server import ACCESS_KEY, MIN_PART_SIZE, REGION, SECRET_KEY
from workers.storage import LocalObjectStore, ObjectStore, S3ObjectStore

SIGNING_KEY = "test-signing-key"

_bucket_numbers = itertools.count(1)


def make_local_store(tmp_path) -> LocalObjectStore:
    store = LocalObjectStore(
        tmp_path / "objects",
        "controlplane",
        public_base_url="http://testserver",
        signing_key=SIGNING_KEY,
    )
    store.ensure_bucket()
    return store


def make_s3_store(endpoint: str) -> S3ObjectStore:
    # A bucket per test: moto's state is shared by the whole session.
    store = S3ObjectStore(
        endpoint,
        f"test-bucket-{next(_bucket_numbers)}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
        part_size=MIN_PART_SIZE,
    )
    store.ensure_bucket()
    return store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return make_local_store(tmp_path)
    return make_s3_store(request.getfixturevalue("s3_endpoint"))


@pytest.fixture
def local_store(tmp_path) -> LocalObjectStore:
    return make_local_store(tmp_path)


@pytest.fixture
def s3_store(s3_endpoint) -> S3ObjectStore:
    return make_s3_store(s3_endpoint)


def _boto3_client(store: S3ObjectStore):
    # An independent client checks what the server holds, not what our SDK wrapper reports.
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{store.endpoint}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )


def _leftovers(store: ObjectStore) -> list[str]:
    """Everything the backend holds: files (temporary ones too), versions, open uploads."""
    if isinstance(store, LocalObjectStore):
        return sorted(
            p.relative_to(store.bucket_dir).as_posix()
            for p in store.bucket_dir.rglob("*")
            if p.is_file() or not any(p.iterdir())  # files, and folders left empty
        )
    assert isinstance(store, S3ObjectStore)
    client = _boto3_client(store)
    versions = client.list_object_versions(Bucket=store.bucket)
    uploads = client.list_multipart_uploads(Bucket=store.bucket)
    return sorted(
        [f"version {v['Key']} {v['VersionId']}" for v in versions.get("Versions", [])]
        + [f"delete marker {m['Key']}" for m in versions.get("DeleteMarkers", [])]
        + [f"upload {u['Key']}" for u in uploads.get("Uploads", [])]
    )


@pytest.fixture
def s3_client(s3_store):
    return _boto3_client(s3_store)


@pytest.fixture
def leftovers(store):
    """`leftovers()` -> what `store` holds, for tests that check nothing was left behind."""
    return lambda: _leftovers(store)
