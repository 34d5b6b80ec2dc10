"""Applying worker events: idempotent, ordered by claims, stale attempts ignored."""

from datetime import timedelta

import pytest
from django.utils import timezone

from workers.protocol import EventType, JobEvent

pytestmark = pytest.mark.django_db


def _event(job, seq, event_type, attempt=1, **payload):
    return JobEvent(job_id=job.pk, attempt=attempt, seq=seq, type=event_type, payload=payload)


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_job_is_dispatched_after_commit_with_its_spec(job, sent_jobs):
    (name, args, queue) = sent_jobs[-1]
    assert name == "workers.run_job" and queue == "cpu"
    spec = args[0]
    assert (
        spec["job_id"] == job.pk
        and spec["attempt"] == 1
        and spec["inputs"][0]["sha256"] == job.inputs[0]["sha256"]
    )


def test_a_redelivered_event_is_applied_once(job):
    from controlplane.jobs.models import JobEventRecord, JobMetric
    from controlplane.jobs.tasks import apply_event

    started = _event(job, 0, EventType.STARTED, worker="w1").to_dict()
    metric = _event(job, 1, EventType.METRIC, step=1, values={"loss": 2.5}).to_dict()
    assert apply_event(started) is True
    assert apply_event(metric) is True
    assert apply_event(metric) is False
    assert apply_event(started) is False
    assert JobEventRecord.objects.filter(job=job).count() == 2
    assert JobMetric.objects.get(job=job).value == 2.5


def test_full_life_cycle_is_audited(job):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.services import job_apply_event

    job_apply_event(_event(job, 0, EventType.STARTED, worker="w1"))
    job_apply_event(_event(job, 1, EventType.FINISHED, result={"line_count": 2}))
    job.refresh_from_db()
    assert job.state == "succeeded" and job.result == {"line_count": 2}
    actions = list(
        AuditEvent.objects.filter(artifact_type="job", artifact_id=str(job.pk)).values_list(
            "action", flat=True
        )
    )
    assert actions == ["job.created", "job.started", "job.succeeded"]


def test_events_of_a_superseded_attempt_are_ignored(job):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_apply_event

    job_apply_event(_event(job, 0, EventType.STARTED))
    Job.objects.filter(pk=job.pk).update(attempt=2, state="queued")
    assert job_apply_event(_event(job, 1, EventType.FINISHED, attempt=1)) is False
    job.refresh_from_db()
    assert job.state == "queued"


def test_a_finished_event_waits_for_the_events_before_it(job):
    from controlplane.jobs.services import EventNotReady, job_apply_event

    with pytest.raises(EventNotReady) as waiting:
        job_apply_event(_event(job, 1, EventType.FINISHED, result={}))
    assert waiting.value.missing == [0]
    job.refresh_from_db()
    assert job.state == "queued"
    job_apply_event(_event(job, 0, EventType.STARTED))
    assert job_apply_event(_event(job, 1, EventType.FINISHED, result={})) is True
    job.refresh_from_db()
    assert job.state == "succeeded"


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_reaper_redispatches_a_job_whose_lease_ran_out(job, sent_jobs):
    from controlplane.jobs.services import job_apply_event, jobs_reap_expired
    from controlplane.storage import object_store
    from workers.protocol import superseded_marker_key

    job_apply_event(_event(job, 0, EventType.STARTED))
    job_apply_event(
        _event(
            job,
            1,
            EventType.CHECKPOINT,
            step=10,
            key=f"{job.output_prefix}ckpt-10",
            sha256="ab",
            size=3,
        )
    )
    assert jobs_reap_expired() == []  # lease still valid
    later = timezone.now() + timedelta(hours=1)
    assert jobs_reap_expired(now=later) == [job.pk]
    job.refresh_from_db()
    assert job.state == "queued" and job.attempt == 2 and job.resume_checkpoint.endswith("ckpt-10")
    assert object_store().exists(superseded_marker_key(job.pk, 1))
    assert sent_jobs[-1][1][0]["attempt"] == 2
    assert sent_jobs[-1][1][0]["resume_checkpoint"].endswith("ckpt-10")


def test_reaper_gives_up_after_max_attempts(job, settings):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_apply_event, jobs_reap_expired

    settings.JOB_MAX_ATTEMPTS = 1
    job_apply_event(_event(job, 0, EventType.STARTED))
    jobs_reap_expired(now=timezone.now() + timedelta(hours=1))
    job = Job.objects.get(pk=job.pk)
    assert job.state == "failed" and "lease expired" in job.error


def test_heartbeat_extends_the_lease(job):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_apply_event

    job_apply_event(_event(job, 0, EventType.STARTED))
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now())
    job_apply_event(_event(job, 1, EventType.HEARTBEAT))
    job.refresh_from_db()
    assert job.lease_expires_at > timezone.now() + timedelta(seconds=30)


def test_cancel_of_a_queued_job_is_immediate_and_of_a_finished_one_a_conflict(
    job, team, api, django_capture_on_commit_callbacks
):
    from controlplane.storage import object_store
    from workers.protocol import cancel_marker_key

    client = api(team.engineer)
    url = f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/cancel/"
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(url).json()["state"] == "cancelled"
    assert object_store().exists(cancel_marker_key(job.pk))
    response = client.post(url)
    assert (
        response.status_code == 409 and "already cancelled" in response.json()["error"]["message"]
    )


def test_metric_replayed_for_the_same_step_is_not_duplicated(job):
    from controlplane.jobs.models import Job, JobMetric
    from controlplane.jobs.services import job_apply_event

    job_apply_event(_event(job, 0, EventType.STARTED))
    job_apply_event(_event(job, 1, EventType.METRIC, step=5, values={"loss": 3.0}))
    Job.objects.filter(pk=job.pk).update(attempt=2)
    job_apply_event(_event(job, 0, EventType.METRIC, attempt=2, step=5, values={"loss": 2.9}))
    assert list(JobMetric.objects.filter(job=job).values_list("step", "value")) == [(5, 2.9)]


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_a_job_no_worker_picked_up_is_dispatched_again(job, sent_jobs, settings):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.services import jobs_reap_expired
    from controlplane.storage import object_store
    from workers.protocol import superseded_marker_key

    settings.JOB_QUEUE_TIMEOUT_SECONDS = 600
    assert jobs_reap_expired(now=timezone.now() + timedelta(seconds=60)) == []  # a short queue
    assert jobs_reap_expired(now=timezone.now() + timedelta(seconds=700)) == [job.pk]
    job.refresh_from_db()
    assert job.state == "queued" and job.attempt == 2 and sent_jobs[-1][1][0]["attempt"] == 2
    # The first message, if it is ever delivered, finds its attempt superseded and does nothing.
    assert object_store().exists(superseded_marker_key(job.pk, 1))
    event = AuditEvent.objects.get(artifact_id=str(job.pk), action="job.redispatched")
    assert event.payload["reason"] == "not picked up by a worker"
