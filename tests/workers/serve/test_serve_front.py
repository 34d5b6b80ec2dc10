"""The serve node's front against a scripted platform and stub replicas (no models)."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.workers.serve.node_stubs import (
    DEPLOYMENT,
    NODE_SECRET,
    deployment_info,
    run_replicas,
    sha,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def two_replicas(platform, node):
    run_replicas(platform, node, ["r1", "r2"])
    return node


def test_healthz_needs_no_token_and_readyz_follows_the_first_sync(node):
    status, _, body = node.request("GET", "/healthz")
    assert status == 200 and body["node"] == "node-a"
    status, _, body = node.request("GET", "/readyz")
    assert status == 200 and body["ready"] is True


def test_a_request_without_a_token_is_401(two_replicas):
    status, headers, body = two_replicas.complete(token=None)
    assert status == 401
    assert body["error"]["code"] == "not_authenticated"
    assert body["error"]["type"] == "authentication_error"
    assert len(headers["X-Request-Id"]) == 32


def test_a_bad_token_is_401_from_the_verdict(two_replicas, platform):
    status, _, body = two_replicas.complete(token="cp_bad")
    assert status == 401
    assert body["error"]["code"] == "authentication_failed"
    assert platform.authorize_calls[-1] == {"token_sha256": sha("cp_bad"), "deployment": DEPLOYMENT}


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (403, "permission_denied", "permission_error"),
        (404, "deployment_not_found", "not_found_error"),
    ],
)
def test_a_token_not_allowed_gets_the_verdicts_status(two_replicas, platform, status, code, kind):
    platform.verdicts[sha("cp_other")] = {
        "allowed": False,
        "status": status,
        "code": code,
        "message": "no",
    }
    answer_status, _, body = two_replicas.complete(token="cp_other")
    assert answer_status == status
    assert body["error"] == {
        "status": status,
        "code": code,
        "message": "no",
        "type": kind,
        "param": None,
    }


def test_verdicts_are_cached_for_their_ttl(two_replicas, platform):
    platform.allow("cp_short", token_id=8, ttl=0.5)
    for _ in range(3):
        assert two_replicas.complete(token="cp_short")[0] == 200
    assert len([c for c in platform.authorize_calls if c["token_sha256"] == sha("cp_short")]) == 1
    time.sleep(0.6)
    assert two_replicas.complete(token="cp_short")[0] == 200
    assert len([c for c in platform.authorize_calls if c["token_sha256"] == sha("cp_short")]) == 2


def test_a_revoked_token_is_asked_again_at_once(two_replicas, platform):
    assert two_replicas.complete(token="cp_good")[0] == 200
    # The platform revokes token 7: its next sync answer says so, and the verdict changes.
    platform.verdicts[sha("cp_good")] = {
        "allowed": False,
        "status": 401,
        "code": "authentication_failed",
        "message": "token revoked",
    }
    platform.answer["revoked_token_ids"] = [7]
    wait_for(lambda: len(two_replicas.node.auth_cache) == 0, what="the cached verdict dropped")
    status, _, body = two_replicas.complete(token="cp_good")
    assert status == 401 and body["error"]["message"] == "token revoked"


def test_over_the_rate_limit_is_429_with_retry_after(two_replicas, platform):
    platform.allow("cp_slow", token_id=9, rate=12)  # burst 2, then one every 5 s
    assert two_replicas.complete(token="cp_slow")[0] == 200
    assert two_replicas.complete(token="cp_slow")[0] == 200
    status, headers, body = two_replicas.complete(token="cp_slow")
    assert status == 429
    assert body["error"]["code"] == "rate_limited" and body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(headers["Retry-After"]) <= 5
    # Another token has its own bucket.
    assert two_replicas.complete(token="cp_good")[0] == 200


def test_requests_spread_over_the_ready_replicas(two_replicas):
    seen = {two_replicas.complete()[2]["replica_id"] for _ in range(20)}
    assert seen == {"r1", "r2"}


def test_the_replica_gets_the_verdicts_caller_never_the_clients_headers(two_replicas):
    spoof = {
        "X-CP-Caller": json.dumps({"token_id": 1, "user_id": 1, "username": "admin"}),
        "X-CP-Replica": "r9",
        "X-Data-Subject": "ann@example.com",
    }
    status, headers, body = two_replicas.complete(headers=spoof, body={"model": "whatever"})
    assert status == 200
    assert json.loads(body["caller"]) == {"token_id": 7, "user_id": 3, "username": "ann"}
    assert body["replica_header"] is None
    assert body["subject"] == "ann@example.com"
    assert body["model"] == "whatever"  # forwarded unchanged: the replica checks it
    assert body["path"] == "/v1/completions"
    assert body["request_id"] == headers["X-Request-Id"] and len(body["request_id"]) == 32


def test_the_platform_calls_with_the_node_secret_and_a_caller(two_replicas, platform):
    caller = {"token_id": None, "user_id": 5, "username": "owner"}
    status, _, body = two_replicas.complete(
        token=NODE_SECRET, headers={"X-CP-Caller": json.dumps(caller)}
    )
    assert status == 200 and json.loads(body["caller"]) == caller
    assert not [c for c in platform.authorize_calls if c["token_sha256"] == sha(NODE_SECRET)]


def test_models_lists_the_served_model(two_replicas):
    status, _, body = two_replicas.request("GET", f"/p/{DEPLOYMENT}/v1/models", token="cp_good")
    assert status == 200
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny:v1"]


def test_bad_bodies_are_400_and_413(two_replicas):
    path = f"/p/{DEPLOYMENT}/v1/chat/completions"
    status, _, body = two_replicas.request("POST", path, b"{not json", token="cp_good")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, _, body = two_replicas.request("POST", path, b"[1, 2]", token="cp_good")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, _, body = two_replicas.request("POST", path, b"x" * (2 << 20), token="cp_good")
    assert status == 413 and body["error"]["code"] == "body_too_large"


def test_unknown_stopped_and_replicaless_deployments(two_replicas, platform):
    platform.verdicts[sha("cp_any")] = {"allowed": True, "caller": {"token_id": 11, "user_id": 3}}
    platform.answer["deployments"] = [
        deployment_info(),
        deployment_info("acme/old", state="stopped", reason="stopped by ann"),
        deployment_info("acme/cold"),
    ]
    wait_for(lambda: two_replicas.node.deployment("acme/cold"), what="the new answer")
    status, _, body = two_replicas.request(
        "POST", "/p/acme/nope/v1/completions", {}, token="cp_any"
    )
    assert status == 404 and body["error"]["code"] == "deployment_not_found"
    status, _, body = two_replicas.request("POST", "/p/acme/old/v1/completions", {}, token="cp_any")
    assert status == 503 and body["error"]["code"] == "deployment_stopped"
    assert "stopped by ann" in body["error"]["message"]
    status, headers, body = two_replicas.request(
        "POST", "/p/acme/cold/v1/completions", {}, token="cp_any"
    )
    assert status == 503 and body["error"]["code"] == "no_replica" and headers["Retry-After"]
    status, _, body = two_replicas.request("GET", "/p/acme/chat/v1/embeddings", token="cp_any")
    assert status == 404


def test_sse_chunks_pass_through_as_they_come(two_replicas):
    connection = http.client.HTTPConnection("127.0.0.1", two_replicas.port, timeout=10)
    body = json.dumps({"model": "tiny", "prompt": "hi", "stream": True, "chunks": 4, "delay": 0.3})
    connection.request(
        "POST",
        f"/p/{DEPLOYMENT}/v1/completions",
        body=body,
        headers={"Authorization": "Bearer cp_good", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/event-stream"
    assert response.getheader("Transfer-Encoding") == "chunked"
    first = response.read1(65536)
    first_at = time.time()
    rest = response.read()
    events = [line for line in (first + rest).decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and len(events) == 5
    # The first chunk reached us before the replica had produced the last one.
    last_sent = json.loads(events[-2].removeprefix("data: "))["sent_at"]
    assert first_at < last_sent
    # The connection stays usable (keep-alive after a chunked answer).
    connection.request(
        "POST",
        f"/p/{DEPLOYMENT}/v1/completions",
        body=json.dumps({"prompt": "again"}),
        headers={"Authorization": "Bearer cp_good", "Content-Type": "application/json"},
    )
    again = connection.getresponse()
    assert again.status == 200 and json.loads(again.read())["replica_id"] in {"r1", "r2"}


def test_a_client_leaving_mid_stream_closes_the_replicas_stream(
    two_replicas, tmp_path, monkeypatch
):
    connection = http.client.HTTPConnection("127.0.0.1", two_replicas.port, timeout=10)
    body = json.dumps({"prompt": "hi", "stream": True, "chunks": 50, "delay": 0.05})
    connection.request(
        "POST",
        f"/p/{DEPLOYMENT}/v1/completions",
        body=body,
        headers={"Authorization": "Bearer cp_good", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    first = response.read1(65536)
    replica_id = json.loads(first.decode().split("\n\n")[0].removeprefix("data: "))["replica_id"]
    connection.sock.close()
    connection.close()
    # The replica notices (its writes fail) long before its 50 chunks would have ended.
    wait_for(
        lambda: two_replicas.supervisor.replica(replica_id).health.get("running") == 0,
        timeout=2.0,
        what="the replica's stream to end",
    )


def test_front_overhead_is_small(two_replicas):
    connection = http.client.HTTPConnection("127.0.0.1", two_replicas.port, timeout=10)
    headers = {"Authorization": "Bearer cp_good", "Content-Type": "application/json"}
    timings = []
    for _ in range(60):
        started = time.perf_counter()
        connection.request(
            "POST", f"/p/{DEPLOYMENT}/v1/completions", body=b'{"prompt": "hi"}', headers=headers
        )
        response = connection.getresponse()
        response.read()
        timings.append(time.perf_counter() - started)
        assert response.status == 200
    timings.sort()
    # Front + stub replica, both on the loopback: the target for the whole path is 15 ms.
    assert timings[len(timings) // 2] < 0.015, timings


def test_the_stdlibs_own_errors_come_in_the_error_shape(node):
    import socket

    with socket.create_connection(("127.0.0.1", node.port)) as raw:
        raw.sendall(b"GARBAGE\r\n\r\n")
        answer = raw.recv(65536).decode()
    # A request line that names no HTTP version gets an HTTP/0.9 answer: the body alone.
    error = json.loads(answer)["error"]
    assert error["status"] == 400 and error["type"] == "invalid_request_error"
