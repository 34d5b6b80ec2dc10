"""Where a store keeps its data: the bucket and the region the server says, not the config's."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.faultproxy import FaultProxy
from tests.s3server import ACCESS_KEY, SECRET_KEY
from workers.storage import S3ObjectStore, StorageError, StoreLocation
from workers.storage.retrying import RetryingObjectStore


def _s3_store(endpoint: str, bucket: str, region: str) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint, bucket, access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=region
    )


def _bucket_in(endpoint: str, region: str) -> str:
    """A new bucket created in `region` (moto keeps the region it was created in)."""
    bucket = f"where-{region}-{uuid.uuid4().hex[:8]}"
    _s3_store(endpoint, bucket, region).ensure_bucket()
    return bucket


def test_local_store_reports_its_bucket_on_this_machine(local_store):
    assert local_store.location() == StoreLocation(
        backend="local", bucket="controlplane", region="local"
    )
    assert RetryingObjectStore(local_store).location() == local_store.location()


def test_each_s3_bucket_reports_its_own_region_whatever_the_config_says(s3_endpoint):
    american = _bucket_in(s3_endpoint, "us-east-1")
    european = _bucket_in(s3_endpoint, "eu-west-1")

    # Configured with each other's region, or one neither bucket is in: the server decides.
    for configured in ("eu-west-1", "ap-southeast-2"):
        assert _s3_store(s3_endpoint, american, configured).location() == StoreLocation(
            backend="s3", bucket=american, region="us-east-1"
        )
    for configured in ("us-east-1", "ap-southeast-2"):
        assert _s3_store(s3_endpoint, european, configured).location() == StoreLocation(
            backend="s3", bucket=european, region="eu-west-1"
        )


def test_the_region_is_looked_up_once_per_store(s3_endpoint):
    bucket = _bucket_in(s3_endpoint, "eu-west-1")
    host, port = s3_endpoint.split(":")
    with FaultProxy(host, int(port)) as proxy:
        store = _s3_store(f"127.0.0.1:{proxy.port}", bucket, "us-east-1")
        first = store.location()
        proxy.cut()  # a version recorded during an outage needs no request

        assert store.location() == first and first.region == "eu-west-1"


def test_an_unreachable_server_is_an_error_not_the_configured_region(s3_endpoint):
    bucket = _bucket_in(s3_endpoint, "eu-west-1")
    host, port = s3_endpoint.split(":")
    with FaultProxy(host, int(port)) as proxy:
        store = _s3_store(f"127.0.0.1:{proxy.port}", bucket, "us-east-1")
        proxy.cut()
        with pytest.raises(StorageError, match="region"):
            store.location()
        proxy.restore()

        # Nothing was remembered from the failure: the next call asks again.
        assert store.location().region == "eu-west-1"


def test_a_missing_bucket_is_an_error(s3_endpoint):
    with pytest.raises(StorageError, match="NoSuchBucket"):
        _s3_store(s3_endpoint, f"missing-{uuid.uuid4().hex[:8]}", "us-east-1").location()


class _RefusesLocation(BaseHTTPRequestHandler):
    """An S3 server whose policy denies GetBucketLocation (AWS without that permission)."""

    def do_GET(self) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message><RequestId>1</RequestId><HostId>h</HostId></Error>"
        )
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_server_that_will_not_say_leaves_the_configured_region():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusesLocation)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        store = _s3_store(f"127.0.0.1:{server.server_port}", "guarded", "eu-central-1")
        assert store.location() == StoreLocation(
            backend="s3", bucket="guarded", region="eu-central-1"
        )
    finally:
        server.shutdown()
        server.server_close()
