"""Shared fixtures of the job handler tests."""

import pytest

from workers.config import object_store_config
from workers.storage import get_object_store


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local object store of this test's own (no S3 endpoint), its bucket made."""
    monkeypatch.setenv("OBJECT_STORE_ROOT", str(tmp_path / "objects"))
    monkeypatch.delenv("OBJECT_STORE_ENDPOINT", raising=False)
    store = get_object_store(object_store_config())
    store.ensure_bucket()
    return store
