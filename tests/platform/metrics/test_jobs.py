"""The database's figures: jobs by state, held for quota or capacity, run times of the
last hour, event-application lag and heartbeat ages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.platform.metrics.conftest import sample

pytestmark = pytest.mark.django_db


def _job(team, **fields):
    from controlplane.jobs.models import Job

    fields.setdefault("kind", "pretrain")
    return Job.objects.create(project=team.project, created_by=team.engineer, **fields)


def test_jobs_by_state_kind_and_queue(scrape, team):
    for _ in range(2):
        _job(team, state="queued", queue="gpu")
    _job(team, state="queued", queue="gpu", held_for="quota")
    _job(team, state="queued", queue="gpu", held_for="capacity", held_reason="needs 8 GPUs")
    _job(team, state="running", queue="cpu", kind="inspect")
    _job(team, state="succeeded", queue="gpu")

    families = scrape()
    jobs = "controlplane_jobs"
    assert sample(families, jobs, state="queued", kind="pretrain", queue="gpu") == 4
    assert sample(families, jobs, state="running", kind="inspect", queue="cpu") == 1
    assert sample(families, jobs, state="running", kind="pretrain", queue="gpu") == 0
    assert sample(families, jobs, state="succeeded") is None  # finished: see run times
    assert sample(families, "controlplane_jobs_held", reason="quota", queue="gpu") == 1
    assert sample(families, "controlplane_jobs_held", reason="quota", queue="cpu") == 0
    assert sample(families, "controlplane_jobs_held", reason="capacity", queue="gpu") == 1
    assert sample(families, "controlplane_jobs_held", reason="capacity", queue="cpu") == 0


def test_oldest_queued_job_age(scrape, team):
    job = _job(team, state="queued", queue="gpu")
    type(job).objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    families = scrape()
    age = sample(families, "controlplane_job_queued_oldest_age_seconds", queue="gpu")
    assert 599 <= age <= 660
    assert sample(families, "controlplane_job_queued_oldest_age_seconds", queue="cpu") == 0


def test_run_times_of_the_jobs_finished_in_the_last_hour(scrape, team):
    now = timezone.now()

    def finished(minutes_ago: int, run_seconds: int, state: str = "succeeded"):
        end = now - timedelta(minutes=minutes_ago)
        _job(team, state=state, started_at=end - timedelta(seconds=run_seconds), finished_at=end)

    finished(5, 45)
    finished(30, 200)
    finished(50, 4000, state="failed")
    finished(90, 20)  # outside the window
    _job(team, state="cancelled", finished_at=now)  # never started: no run time

    families = scrape()
    name = "controlplane_job_duration_seconds"
    ok = {"kind": "pretrain", "state": "succeeded"}
    assert sample(families, name, "_bucket", le="30.0", **ok) == 0
    assert sample(families, name, "_bucket", le="60.0", **ok) == 1
    assert sample(families, name, "_bucket", le="300.0", **ok) == 2
    assert sample(families, name, "_bucket", le="+Inf", **ok) == 2
    assert sample(families, name, "_gcount", **ok) == 2
    assert sample(families, name, "_gsum", **ok) == pytest.approx(245)
    failed = {"kind": "pretrain", "state": "failed"}
    assert sample(families, name, "_bucket", le="3600.0", **failed) == 0
    assert sample(families, name, "_bucket", le="7200.0", **failed) == 1
    assert sample(families, name, "_gcount", kind="pretrain", state="cancelled") is None


def test_event_application_lag(scrape, team):
    from controlplane.jobs.models import JobEventRecord

    job = _job(team, state="running", queue="cpu")
    now = timezone.now()
    for seq, lag in enumerate((0.02, 0.3, 2.0, 40.0)):
        JobEventRecord.objects.create(
            job=job, attempt=1, seq=seq, type="metric", emitted_at=now - timedelta(seconds=lag)
        )
    old = JobEventRecord.objects.create(
        job=job, attempt=1, seq=9, type="metric", emitted_at=now - timedelta(seconds=1)
    )
    JobEventRecord.objects.filter(pk=old.pk).update(applied_at=now - timedelta(minutes=20))

    families = scrape()
    name = "controlplane_event_apply_lag_seconds"
    assert sample(families, name, "_bucket", le="0.05") == 1
    assert sample(families, name, "_bucket", le="0.5") == 2
    assert sample(families, name, "_bucket", le="2.5") == 3
    assert sample(families, name, "_bucket", le="60.0") == 4
    assert sample(families, name, "_gcount") == 4  # the one applied 20 minutes ago is out


def test_heartbeat_ages_of_workers_and_serve_nodes(scrape, team):
    from controlplane.serving.models import ServeNode

    now = timezone.now()
    _job(
        team, state="running", worker="celery@gpu-1", last_heartbeat_at=now - timedelta(seconds=30)
    )
    _job(
        team, state="running", worker="celery@gpu-1", last_heartbeat_at=now - timedelta(seconds=90)
    )
    _job(team, state="running", worker="celery@cpu-1", last_heartbeat_at=now - timedelta(seconds=5))
    _job(team, state="succeeded", worker="celery@gone", last_heartbeat_at=now)
    ServeNode.objects.create(
        name="node-a", url="http://a", device="cuda", last_seen=now - timedelta(seconds=12)
    )
    ServeNode.objects.create(name="node-old", url="http://b", last_seen=now - timedelta(days=3))

    families = scrape()
    worker = "controlplane_worker_heartbeat_age_seconds"
    assert 30 <= sample(families, worker, worker="celery@gpu-1") < 40  # its newest heartbeat
    assert 5 <= sample(families, worker, worker="celery@cpu-1") < 15
    assert sample(families, worker, worker="celery@gone") is None
    node = "controlplane_serve_node_last_seen_age_seconds"
    assert 12 <= sample(families, node, node="node-a", device="cuda") < 22
    assert sample(families, node, node="node-old") is None


def test_the_database_away_is_a_gauge_not_an_error(scrape, monkeypatch):
    from django.db import OperationalError

    from controlplane.metrics import selectors

    def down():
        raise OperationalError("connection refused")

    monkeypatch.setattr(selectors, "live_job_counts", down)
    families = scrape()
    assert sample(families, "controlplane_metrics_source_up", source="database") == 0
    assert sample(families, "controlplane_metrics_source_up", source="broker") == 1
    assert "controlplane_jobs" not in families
