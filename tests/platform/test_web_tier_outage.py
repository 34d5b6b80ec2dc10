"""Issue 11, "broker and cache outages at the web tier", as an operator sees it: gunicorn with
the README's production setting (CACHE_URL and CELERY_BROKER_URL on Redis), and that Redis
(a private one) stopped under it. Authenticated requests keep answering, a job is
accepted, /healthz says degraded, /readyz names the broker and the cache and stays 200."""

from __future__ import annotations

import json

import pytest

from tests.liveprocess import Process, get, gunicorn_command, http, process_env, wait_until
from tests.redisserver import free_port, private_redis  # noqa: F401 - fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_web_tier_rides_out_a_redis_outage(
    private_redis,  # noqa: F811
    team,
    make_upload,
    tmp_path,
):
    from controlplane.accounts.services import api_token_create

    upload = make_upload(team.project, team.engineer, b"a\n")
    _token, raw = api_token_create(user=team.engineer, name="probe")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = process_env(
        CACHE_URL=private_redis.url.replace("/0", "/1"), CELERY_BROKER_URL=private_redis.url
    )
    web = Process("web", gunicorn_command(port), env, tmp_path)
    try:
        wait_until(lambda: get(base + "/healthz") is not None, 60, web.tail)
        assert http("GET", f"{base}/api/v1/projects/", token=raw)[0] == 200

        private_redis.stop()
        for _ in range(3):
            status, body, _headers = http("GET", f"{base}/api/v1/projects/", token=raw)
            assert status == 200, body[:500]
        job = json.dumps({"kind": "inspect", "params": {"upload_id": upload.pk}}).encode()
        status, body, _headers = http(
            "POST", f"{base}/api/v1/projects/{team.project.pk}/jobs/", token=raw, body=job
        )
        assert status == 201, body[:500]

        health = json.loads(get(base + "/healthz"))
        assert health["status"] == "degraded" and health["degraded"] == ["broker", "cache"]
        assert health["checks"]["cache"]["fallback_operations"] > 0
        status, body, _headers = http("GET", f"{base}/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["failing"] == ["broker", "cache"], ready
        assert ready["checks"]["database"]["ok"] and ready["checks"]["object_store"]["ok"]
        assert ready["checks"]["dispatch_outbox"]["pending"] == 1
        assert web.log.read_text().count("serving from a per-process fallback") == 1
    finally:
        web.stop()
