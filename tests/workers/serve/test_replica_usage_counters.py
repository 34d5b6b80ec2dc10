"""A replica counts what it served (requests, tokens in and out) in its health, which the
node reports to the platform: serving usage is measured whether or not it archives."""

from __future__ import annotations

import time

import pytest
from replica_helpers import ListArchiver, make_spec, post, running_replica


@pytest.mark.parametrize("archive", [True, False])
def test_the_health_counts_requests_and_tokens(archive):
    spec = make_spec(guardrails={"pii": "off", "pii_output": "off"}, archive=archive)
    with running_replica(spec=spec, archiver=ListArchiver()) as server:
        answers = [
            post(server, "/v1/completions", {"prompt": "To be", "max_tokens": n}) for n in (2, 3)
        ]
        health = _settled_health(server)
    usage = [body["usage"] for _status, _headers, body in answers]
    assert [status for status, _headers, _body in answers] == [200, 200]
    assert health["requests"] == 2
    assert health["tokens_in"] == sum(u["prompt_tokens"] for u in usage) > 0
    assert health["tokens_out"] == sum(u["completion_tokens"] for u in usage) > 0


def _settled_health(server) -> dict:
    """The health once no request is in flight: a replica counts a request's tokens after
    the client has its answer (the archive step follows the send), so the client can be
    a moment ahead of the counters."""
    deadline = time.monotonic() + 10
    health = server.health()
    while health["inflight"] and time.monotonic() < deadline:
        time.sleep(0.01)
        health = server.health()
    return health
