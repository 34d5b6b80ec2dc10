"""Fixtures for worker-side tests (no Django needed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3server import start_s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """ "127.0.0.1:PORT" of a moto S3 server shared by the session; isolate by bucket name."""
    endpoint, stop = start_s3_server()
    yield endpoint
    stop()


@pytest.fixture
def local_store(tmp_path):
    """A local-filesystem object store of its own, under the test's temporary folder."""
    from workers.storage import LocalObjectStore

    store = LocalObjectStore(
        tmp_path / "objects",
        "test",
        public_base_url="http://127.0.0.1:8000",
        signing_key="test-signing-key",
    )
    store.ensure_bucket()
    return store
