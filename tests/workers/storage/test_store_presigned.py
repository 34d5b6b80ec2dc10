"""Presigned URLs: real HTTP against the S3 server; signed tokens on the local store.

The local store's URLs are served by the web app (`/storage/local/<token>`), which asks
`verify_presigned_token` what the token grants; that check is what is tested here.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import pytest
import requests

from tests.s3server import ACCESS_KEY, SECRET_KEY
from workers.storage import (
    LocalObjectStore,
    PresignedURLError,
    S3ObjectStore,
    StorageError,
)


def test_s3_presigned_get_serves_the_object_over_http(s3_store):
    s3_store.put_bytes("projects/1/report.txt", b"quarterly figures\n")

    url = s3_store.presigned_get_url("projects/1/report.txt", expires=timedelta(minutes=5))
    response = requests.get(url, timeout=10)

    assert response.status_code == 200
    assert response.content == b"quarterly figures\n"


def test_s3_presigned_put_takes_a_raw_body_with_content_length(s3_store):
    data = b"uploaded straight to the object store\n" * 1000
    url = s3_store.presigned_put_url("projects/1/uploads/7", expires=timedelta(minutes=5))

    response = requests.put(url, data=data, timeout=10)

    assert response.status_code == 200, response.text
    # What a browser or curl sends: the length, and no multipart form wrapping the bytes.
    assert response.request.headers["Content-Length"] == str(len(data))
    assert "Content-Type" not in response.request.headers
    assert s3_store.get_bytes("projects/1/uploads/7") == data
    assert s3_store.stat("projects/1/uploads/7").size == len(data)


def test_s3_presigned_url_uses_the_public_endpoint_name(s3_store):
    host, port = s3_store.endpoint.split(":")
    assert host == "127.0.0.1"
    # As compose has it: the app knows `minio:9000`, a browser knows `localhost:9000`.
    public = S3ObjectStore(
        s3_store.endpoint,
        s3_store.bucket,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        public_endpoint=f"localhost:{port}",
    )
    public.put_bytes("projects/1/a", b"via the public name")

    url = public.presigned_get_url("projects/1/a")

    assert url.startswith(f"http://localhost:{port}/{s3_store.bucket}/projects/1/a?")
    assert requests.get(url, timeout=10).content == b"via the public name"


def test_s3_presigned_url_is_signed_for_its_key(s3_store):
    url = s3_store.presigned_get_url("projects/1/a")

    assert f"/{s3_store.bucket}/projects/1/a?" in url
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=3600" in url


@pytest.mark.parametrize("expires", [timedelta(0), timedelta(days=8), 3600])
def test_presigned_expiry_must_be_between_a_second_and_a_week(store, expires):
    with pytest.raises(StorageError, match="between 1 second and 7 days"):
        store.presigned_get_url("projects/1/a", expires=expires)
    with pytest.raises(StorageError, match="between 1 second and 7 days"):
        store.presigned_put_url("projects/1/a", expires=expires)


def _token(url: str) -> str:
    prefix = "http://testserver/storage/local/"
    assert url.startswith(prefix)
    return url[len(prefix) :]


def test_local_token_grants_its_method_on_its_key(local_store):
    get_token = _token(local_store.presigned_get_url("projects/1/a.txt"))
    put_token = _token(local_store.presigned_put_url("projects/1/b.txt"))

    assert local_store.verify_presigned_token(get_token, "GET") == "projects/1/a.txt"
    assert local_store.verify_presigned_token(put_token, "put") == "projects/1/b.txt"
    with pytest.raises(PresignedURLError, match="allows GET, not PUT"):
        local_store.verify_presigned_token(get_token, "PUT")
    with pytest.raises(PresignedURLError, match="allows PUT, not GET"):
        local_store.verify_presigned_token(put_token, "GET")


def test_local_token_expires(local_store, monkeypatch):
    token = _token(local_store.presigned_get_url("projects/1/a", expires=timedelta(seconds=30)))
    now = time.time()

    monkeypatch.setattr(time, "time", lambda: now + 25)
    assert local_store.verify_presigned_token(token, "GET") == "projects/1/a"
    monkeypatch.setattr(time, "time", lambda: now + 35)
    with pytest.raises(PresignedURLError, match="expired"):
        local_store.verify_presigned_token(token, "GET")


def _reencode(token: str, change) -> str:
    payload, _, signature = token.partition(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    changed = json.dumps(change(fields), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(changed).rstrip(b"=").decode() + "." + signature


def test_local_token_cannot_be_tampered_with(local_store, tmp_path):
    token = _token(local_store.presigned_get_url("projects/1/a"))
    payload, _, signature = token.partition(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    other_key = LocalObjectStore(
        tmp_path / "objects",
        "controlplane",
        public_base_url="http://testserver",
        signing_key="other",
    )
    forged = [
        _reencode(token, lambda f: [f[0], "projects/2/a", f[2]]),  # another project's object
        _reencode(token, lambda f: ["PUT", f[1], f[2]]),  # write instead of read
        _reencode(token, lambda f: [f[0], f[1], f[2] + 86400]),  # a longer life
        f"{payload}.{flipped}",
        payload,
        f"{payload}.",
        "",
        "garbage",
        "a.b.c",
        _token(other_key.presigned_get_url("projects/1/a")),
    ]

    for bad in forged:
        with pytest.raises(PresignedURLError):
            local_store.verify_presigned_token(bad, "GET")
