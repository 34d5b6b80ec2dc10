"""/healthz (liveness: cheap, always 200, names what is degraded) and /readyz (each
dependency checked with its latency; 503 only without the database)."""

from __future__ import annotations

import time

import pytest

from tests.redisserver import free_port, private_redis  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh_broker_health(monkeypatch):
    import controlplane.jobs.dispatch as dispatch

    health = dispatch.BrokerHealth()
    monkeypatch.setattr(dispatch, "broker_health", health)
    return health


def test_healthz_is_cheap_and_ok(client, django_assert_num_queries, fresh_broker_health):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["degraded"] == []


def test_healthz_reports_a_failed_broker_send_but_stays_200(client, fresh_broker_health):
    fresh_broker_health.record_failure(ConnectionRefusedError("Connection refused"))
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded" and body["degraded"] == ["broker"]
    assert "Connection refused" in body["checks"]["broker"]["last_error"]


def test_readyz_checks_each_dependency_with_its_latency(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok", body
    for name in ("database", "broker", "object_store", "cache"):
        check = body["checks"][name]
        assert check["ok"] is True and check["latency_ms"] >= 0, name
    assert body["checks"]["dispatch_outbox"]["pending"] == 0


def test_readyz_names_a_dead_broker_and_stays_ready(client, private_redis, monkeypatch):  # noqa: F811
    from controlplane.celery_app import app

    monkeypatch.setattr(app.conf, "broker_write_url", private_redis.url)
    assert client.get("/readyz").json()["checks"]["broker"]["ok"] is True
    private_redis.stop()
    response = client.get("/readyz")
    assert response.status_code == 200  # jobs wait in the outbox: still worth serving
    body = response.json()
    assert body["status"] == "degraded" and body["failing"] == ["broker"]
    assert "Connection refused" in body["checks"]["broker"]["error"]


def test_readyz_is_503_without_the_database(client, monkeypatch):
    from django.db import connection, connections

    import controlplane.health as health

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    # A real connection attempt to a database port where nothing listens.
    settings_dict = {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": free_port()}
    dead = type(connections["default"])(settings_dict, alias="dead")
    monkeypatch.setattr(health, "connection", dead)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["checks"]["database"]["ok"] is False
    assert "OperationalError" in body["checks"]["database"]["error"]
    assert body["checks"]["broker"]["ok"] is True  # the others are still checked
    assert client.get("/healthz").status_code == 200  # liveness: no restart for this


def test_readyz_bounds_a_hanging_object_store(client, monkeypatch):
    import threading

    import controlplane.health as health

    release = threading.Event()
    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.5)
    monkeypatch.setattr(health, "check_object_store", lambda: release.wait(10))
    start = time.monotonic()
    try:
        response = client.get("/readyz")
        seconds = time.monotonic() - start
    finally:
        release.set()
    assert seconds < 3, "the probe waited for the hanging check"
    body = response.json()
    assert response.status_code == 200 and body["failing"] == ["object_store"]
    assert "no answer" in body["checks"]["object_store"]["error"]


def test_readyz_reconnects_a_connection_the_database_dropped(client, monkeypatch):
    """A database restart leaves processes with dead connections: not an outage."""
    from django.db import connection, connections

    import controlplane.health as health

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    # `connection` is a proxy; the class of the real wrapper makes a second connection.
    kept = type(connections["default"])(dict(connection.settings_dict), alias="kept")
    kept.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [kept.connection.info.backend_pid])
    monkeypatch.setattr(health, "connection", kept)
    try:
        response = client.get("/readyz")
    finally:
        kept.close()
    assert response.status_code == 200 and response.json()["checks"]["database"]["ok"] is True
