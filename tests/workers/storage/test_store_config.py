"""`get_object_store()` picks the backend from the OBJECT_STORE_* environment."""

from __future__ import annotations

from workers.config import object_store_config
from workers.storage import LocalObjectStore, S3ObjectStore, get_object_store


def test_no_endpoint_means_the_local_store_under_its_root(monkeypatch, tmp_path):
    monkeypatch.delenv("OBJECT_STORE_ENDPOINT", raising=False)
    monkeypatch.setenv("OBJECT_STORE_ROOT", str(tmp_path / "objects"))
    monkeypatch.setenv("OBJECT_STORE_BUCKET", "mine")

    store = get_object_store()
    store.ensure_bucket()
    store.put_bytes("projects/1/a", b"data")

    assert isinstance(store, LocalObjectStore)
    assert (tmp_path / "objects" / "mine" / "projects" / "1" / "a").read_bytes() == b"data"


def test_an_endpoint_means_s3_on_that_bucket(monkeypatch, s3_endpoint):
    monkeypatch.setenv("OBJECT_STORE_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("OBJECT_STORE_BUCKET", "from-environment")

    store = get_object_store(object_store_config())
    store.ensure_bucket()
    stored = store.put_bytes("projects/1/a", b"data")

    assert isinstance(store, S3ObjectStore)
    assert store.bucket == "from-environment"
    assert stored.version_id  # ensure_bucket turned versioning on
    assert store.get_bytes("projects/1/a") == b"data"
