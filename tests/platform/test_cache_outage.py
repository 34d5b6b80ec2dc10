"""Issue 11, "broker and cache outages at the web tier": with CACHE_URL on a Redis that goes
down, authenticated API requests still answer (throttling falls back to a per-process
counter), with one warning and a counter, and the probes say so. Before: every
authenticated request was a 500 (the throttle's cache raised ConnectionError)."""

from __future__ import annotations

import logging

import pytest
import redis as redis_client

from tests.redisserver import private_redis  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_cache(private_redis, settings, monkeypatch):  # noqa: F811
    """The default cache as production configures it (settings.py), on a private Redis."""
    from django.core.cache import caches

    import controlplane.cache

    settings.CACHES = {
        "default": {
            "BACKEND": "controlplane.cache.FailOpenRedisCache",
            "LOCATION": private_redis.url,
        }
    }
    monkeypatch.setattr(controlplane.cache, "RETRY_SECONDS", 0.0)  # retry Redis at once
    # Ports are reused: no state of an earlier test's Redis on the same port may leak in.
    monkeypatch.setattr(controlplane.cache, "_health", {})
    caches["default"].fallback.clear()
    return private_redis


def test_production_settings_use_the_fail_open_backend(monkeypatch):
    import importlib

    import controlplane.settings

    monkeypatch.setenv("CACHE_URL", "redis://127.0.0.1:1/1")
    try:
        reloaded = importlib.reload(controlplane.settings)
        assert reloaded.CACHES["default"]["BACKEND"] == "controlplane.cache.FailOpenRedisCache"
    finally:
        monkeypatch.delenv("CACHE_URL")
        importlib.reload(controlplane.settings)


def test_api_answers_while_the_cache_is_down_and_recovers(api, team, redis_cache, caplog):
    from controlplane.cache import cache_status

    client = api(team.engineer)
    assert client.get("/api/v1/projects/").status_code == 200
    throttle_keys = redis_client.Redis.from_url(redis_cache.url).keys("*throttle*")
    assert throttle_keys, "the throttle counted in Redis while it was up"

    redis_cache.stop()
    with caplog.at_level(logging.WARNING, logger="controlplane.cache"):
        statuses = [client.get("/api/v1/projects/").status_code for _ in range(5)]
    assert statuses == [200] * 5
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1, "one warning per minute of outage, not one per request"
    status = cache_status()
    assert status["ok"] is False and status["fallback_operations"] >= 10
    assert "ConnectionError" in status["last_error"]

    redis_cache.start()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="controlplane.cache"):
        assert client.get("/api/v1/projects/").status_code == 200
    assert cache_status()["ok"] is True and "reachable again" in caplog.text


def test_throttling_goes_on_per_process_while_the_cache_is_down(
    api, team, redis_cache, monkeypatch
):
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "3/min"})
    client = api(team.engineer)
    redis_cache.stop()
    statuses = [client.get("/api/v1/projects/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert client.get("/api/v1/projects/").json()["error"]["code"] == "throttled"


def test_the_gpu_workers_answer_does_not_fail_with_the_cache_down(redis_cache, settings):
    from controlplane.jobs.dispatch import training_queue

    settings.TRAINING_QUEUE = "auto"
    redis_cache.stop()
    assert training_queue() in ("cpu", "gpu")
    assert training_queue() in ("cpu", "gpu")  # the second answer from the local fallback


def test_a_broker_blip_does_not_send_training_to_the_cpu_queue(settings, monkeypatch):
    from django.core.cache import cache
    from kombu.exceptions import OperationalError

    import controlplane.jobs.dispatch as dispatch

    settings.TRAINING_QUEUE = "auto"
    monkeypatch.setattr(dispatch, "_last_gpu_answer", None)
    answers = [{"gpu-1@host": [{"name": "gpu"}]}]

    class Inspect:
        def active_queues(self):
            if not answers:
                raise OperationalError("Error 111 connecting to 127.0.0.1:6379.")
            return answers.pop()

    monkeypatch.setattr(dispatch.app.control, "inspect", lambda timeout: Inspect())
    cache.delete(dispatch.GPU_WORKERS_CACHE_KEY)
    assert dispatch.training_queue() == "gpu"
    cache.delete(dispatch.GPU_WORKERS_CACHE_KEY)  # the minute passed; now the broker is down
    assert dispatch.training_queue() == "gpu"
