"""Who may scrape: the token's holder, else loopback/internal networks; 401/403, never 500."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import override_settings

TOKEN = "metrics-token-for-tests-0123456789"
NETWORKS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))

pytestmark = pytest.mark.django_db


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_NETWORKS=NETWORKS)
def test_loopback_scrapes_without_a_token(client):
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        response = client.get("/metrics", REMOTE_ADDR=address)
        assert response.status_code == 200, address
        assert b"controlplane_broker_up" in response.content


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_NETWORKS=NETWORKS)
def test_an_outside_address_is_forbidden(client):
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 403
    assert b"METRICS_ALLOWED_NETWORKS" in response.content
    assert b"controlplane_" not in response.content


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_NETWORKS=(ipaddress.ip_network("10.0.0.0/8"),))
def test_a_configured_internal_network_scrapes(client):
    assert client.get("/metrics", REMOTE_ADDR="10.42.0.7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_NETWORKS=NETWORKS, TRUSTED_PROXY_COUNT=0)
def test_a_request_through_an_untrusted_proxy_is_not_trusted_by_address(client):
    # A proxy on loopback relaying an outside client must not make it look internal.
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert response.status_code == 403
    assert b"METRICS_TOKEN" in response.content


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_NETWORKS=NETWORKS, TRUSTED_PROXY_COUNT=1)
def test_our_own_proxy_passes_on_the_client_address(client):
    inside = client.get("/metrics", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="127.0.0.1")
    outside = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.4")
    assert inside.status_code == 200
    assert outside.status_code == 403


@override_settings(METRICS_TOKEN=TOKEN, METRICS_ALLOWED_NETWORKS=NETWORKS)
def test_with_a_token_set_only_its_holder_scrapes_from_anywhere(client):
    missing = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    basic = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION=f"Basic {TOKEN}")
    assert basic.status_code == 401
    right = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert right.status_code == 200
    assert b"controlplane_jobs" in right.content


@override_settings(METRICS_TOKEN="", METRICS_ALLOWED_NETWORKS=NETWORKS)
def test_only_reads_are_answered(client):
    assert client.post("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 405


def test_bad_settings_are_named_at_start(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {"PATH": "/usr/bin:/bin", "CONTROLPLANE_DATA_DIR": str(tmp_path)}
    for variable, value in (
        ("METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,intranet"),
        ("METRICS_TOKEN", "short"),
    ):
        result = subprocess.run(
            [sys.executable, "manage.py", "check"],
            cwd=root,
            capture_output=True,
            text=True,
            env={**env, variable: value},
            timeout=120,
        )
        assert result.returncode != 0
        assert variable in result.stderr and "Traceback" not in result.stderr
