"""The scrape parses as Prometheus text and as OpenMetrics, every family once."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

EXPECTED = {
    "controlplane_broker_up",
    "controlplane_queue_messages",
    "controlplane_jobs",
    "controlplane_jobs_held",
    "controlplane_job_queued_oldest_age_seconds",
    "controlplane_job_duration_seconds",
    "controlplane_event_apply_lag_seconds",
    "controlplane_worker_heartbeat_age_seconds",
    "controlplane_serve_node_last_seen_age_seconds",
    "controlplane_http_request_duration_seconds",
    "controlplane_metrics_source_up",
    "controlplane_metrics_source_seconds",
}


def test_prometheus_text_format_parses(client):
    from prometheus_client.parser import text_string_to_metric_families

    client.get("/healthz")
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    names = [f.name for f in text_string_to_metric_families(text)]
    assert EXPECTED <= set(names)
    assert len(names) == len(set(names))
    assert text.count("# TYPE controlplane_metrics_source_up ") == 1


def test_openmetrics_for_prometheus(client):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    response = client.get(
        "/metrics",
        REMOTE_ADDR="127.0.0.1",
        HTTP_ACCEPT="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert families["controlplane_job_duration_seconds"].type == "gaugehistogram"
    assert families["controlplane_jobs"].type == "gauge"
