"""Gaps are seen and healed, a success is never lost with its `finished` event, and an
infrastructure failure runs again (issue 12, items 3, 4, 5)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from workers.protocol import (
    RETRYABLE_FIELD,
    EventType,
    JobEvent,
    completion_record_key,
    resend_request_prefix,
)

pytestmark = pytest.mark.django_db


def _event(job, seq, event_type, attempt=1, **payload) -> JobEvent:
    return JobEvent(job_id=job.pk, attempt=attempt, seq=seq, type=event_type, payload=payload)


def _artifact(job, seq, name, attempt=1, kind=EventType.ARTIFACT, **extra) -> JobEvent:
    key = f"{job.output_prefix}attempt-{attempt}/{name}"
    return _event(job, seq, kind, attempt, name=name, key=key, sha256="ab" * 32, size=3, **extra)


def _apply(*events: JobEvent) -> None:
    from controlplane.jobs.services import job_apply_event

    for event in events:
        job_apply_event(event)


def _stream(job):
    from controlplane.jobs.models import JobEventStream

    return JobEventStream.objects.get(job=job, attempt=job.attempt)


def test_a_gap_is_shown_on_the_job_page_until_it_is_filled(job, team, client):
    _apply(_event(job, 0, EventType.STARTED), _event(job, 2, EventType.HEARTBEAT))
    _apply(_event(job, 4, EventType.LOG, message="x"))
    stream = _stream(job)
    assert (stream.max_seq, stream.applied_count, stream.missing_seqs()) == (4, 3, [1, 3])
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "Gap: events #1, #3 missing" in page

    _apply(_event(job, 1, EventType.LOG, message="late"), _event(job, 3, EventType.HEARTBEAT))
    stream = _stream(job)
    assert stream.gap_since is None and stream.missing_seqs() == []
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "5 events applied, up to #4" in page and "Gap:" not in page


def test_a_lasting_gap_asks_the_worker_to_resend_what_is_missing(job, settings):
    from controlplane.jobs.services import events_request_resends
    from controlplane.storage import object_store

    settings.EVENT_GAP_GRACE_SECONDS = 5
    _apply(_event(job, 0, EventType.STARTED), _event(job, 3, EventType.HEARTBEAT))
    now = timezone.now()
    assert events_request_resends(now=now + timedelta(seconds=2)) == []  # maybe just in flight
    assert events_request_resends(now=now + timedelta(seconds=6)) == [(job.pk, 1)]
    assert events_request_resends(now=now + timedelta(seconds=7)) == []  # asked already
    prefix = resend_request_prefix(job.pk, 1)
    (request,) = list(object_store().list(prefix))
    assert json.loads(object_store().get_bytes(request.key)) == {"seqs": [1, 2]}
    assert events_request_resends(now=now + timedelta(seconds=20)) == [(job.pk, 1)]
    assert len(list(object_store().list(prefix))) == 2  # a new object: keys never overwritten

    _apply(_event(job, 1, EventType.LOG, message="re-sent"), _event(job, 2, EventType.HEARTBEAT))
    assert events_request_resends(now=now + timedelta(seconds=60)) == []


@pytest.fixture
def retries(monkeypatch):
    from controlplane.jobs.tasks import apply_event

    class Calls(list):
        class error(Exception):  # noqa: N801 - raised in place of Celery's Retry
            pass

    calls = Calls()

    def retry(**options):
        calls.append(options)
        return Calls.error()

    monkeypatch.setattr(apply_event, "retry", retry)
    return calls


def _run_as_retry(number: int, event: JobEvent):
    from controlplane.jobs.tasks import apply_event

    apply_event.push_request(retries=number)
    try:
        return apply_event.run(event.to_dict())
    finally:
        apply_event.pop_request()


def test_a_finished_that_overtook_an_artifact_is_retried_until_the_artifact_is_applied(
    job, retries
):
    from controlplane.jobs.models import Job

    _apply(_event(job, 0, EventType.STARTED))
    finished = _event(job, 2, EventType.FINISHED, result={"ok": True})
    with pytest.raises(retries.error):
        _run_as_retry(0, finished)
    assert retries[-1]["countdown"] == 0.5 and Job.objects.get(pk=job.pk).state == "running"
    _apply(_artifact(job, 1, "report.json"))
    assert _run_as_retry(1, finished) is True
    job = Job.objects.get(pk=job.pk)
    assert job.state == "succeeded" and job.artifacts.get().name == "report.json"


def test_events_lost_just_before_a_finish_are_a_gap_and_asked_for_again(job, retries, settings):
    from controlplane.jobs.services import events_request_resends
    from controlplane.storage import object_store

    settings.EVENT_GAP_GRACE_SECONDS = 5
    _apply(_event(job, 0, EventType.STARTED), _event(job, 1, EventType.HEARTBEAT))
    finished = _event(job, 4, EventType.FINISHED, result={})  # 2 and 3 never arrived
    with pytest.raises(retries.error):
        _run_as_retry(0, finished)
    stream = _stream(job)
    assert stream.has_gap and stream.missing_seqs() == [2, 3]
    assert events_request_resends(now=timezone.now() + timedelta(seconds=6)) == [(job.pk, 1)]
    (request,) = list(object_store().list(resend_request_prefix(job.pk, 1)))
    assert json.loads(object_store().get_bytes(request.key)) == {"seqs": [2, 3]}

    _apply(_artifact(job, 2, "model.bin"), _event(job, 3, EventType.LOG, message="re-sent"))
    assert _run_as_retry(1, finished) is True
    assert not _stream(job).has_gap


def _write_completion_record(job, finished: JobEvent, outputs: list[JobEvent]) -> None:
    from controlplane.storage import object_store

    record = {"finished": finished.to_dict(), "events": [e.to_dict() for e in outputs]}
    object_store().put_bytes(
        completion_record_key(job.pk, finished.attempt), json.dumps(record).encode()
    )


def test_a_finished_blocked_by_a_lost_artifact_takes_it_from_the_completion_record(job, retries):
    from controlplane.jobs.models import Job, JobEventStream

    outputs = [_artifact(job, 1, "model.bin"), _artifact(job, 2, "tokenizer.json")]
    finished = _event(job, 4, EventType.FINISHED, result={"ok": True})
    _write_completion_record(job, finished, outputs)
    _apply(_event(job, 0, EventType.STARTED), outputs[0])  # seq 2 and 3 were lost
    with pytest.raises(retries.error):
        _run_as_retry(0, finished)  # the first tries wait: usually the event is in flight
    assert _run_as_retry(3, finished) is True
    job = Job.objects.get(pk=job.pk)
    assert job.state == "succeeded" and job.attempt == 1
    assert sorted(job.artifacts.values_list("name", flat=True)) == ["model.bin", "tokenizer.json"]
    stream = JobEventStream.objects.get(job=job)
    assert stream.outputs_reconciled_at is not None and stream.missing_seqs() == [3]


def test_a_finished_that_waits_in_vain_is_parked_not_applied(job, retries, settings):
    from controlplane.jobs.models import DeadLetterEvent, Job
    from controlplane.jobs.tasks import finish_wait_retries

    settings.EVENT_FINISH_WAIT_SECONDS = 10
    _apply(_event(job, 0, EventType.STARTED))
    finished = _event(job, 2, EventType.FINISHED, result={})
    assert _run_as_retry(finish_wait_retries(), finished) is False
    assert Job.objects.get(pk=job.pk).state == "running"
    letter = DeadLetterEvent.objects.get(job=job)
    assert letter.seq == 2 and "waits for event(s) 1" in letter.error


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_the_reaper_finishes_a_job_from_its_completion_record_instead_of_rerunning_it(
    job, sent_jobs
):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import jobs_reap_expired

    outputs = [_artifact(job, 1, "inspection.json"), _artifact(job, 2, "extra.json")]
    finished = _event(job, 3, EventType.FINISHED, result={"line_count": 2})
    _apply(_event(job, 0, EventType.STARTED), outputs[0])  # then the worker's messages got lost
    _write_completion_record(job, finished, outputs)
    dispatched = len(sent_jobs)

    assert jobs_reap_expired(now=timezone.now() + timedelta(hours=1)) == []
    job = Job.objects.get(pk=job.pk)
    assert job.state == "succeeded" and job.attempt == 1 and job.result == {"line_count": 2}
    assert job.artifacts.count() == 2 and len(sent_jobs) == dispatched
    actions = list(
        AuditEvent.objects.filter(artifact_type="job", artifact_id=str(job.pk)).values_list(
            "action", flat=True
        )
    )
    assert actions.count("job.succeeded") == 1 and "job.redispatched" not in actions


@pytest.mark.django_db(transaction=True)
def test_the_reaper_does_not_declare_a_job_lost_while_the_store_cannot_answer(job, monkeypatch):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import jobs_reap_expired
    from controlplane.storage import object_store
    from workers.storage import StorageError

    _apply(_event(job, 0, EventType.STARTED))
    store = object_store()

    def unreachable(key, **kwargs):
        raise StorageError("S3 endpoint unreachable")

    monkeypatch.setattr(store, "get_bytes", unreachable)
    assert jobs_reap_expired(now=timezone.now() + timedelta(hours=1)) == []
    assert Job.objects.get(pk=job.pk).state == "running"
    monkeypatch.undo()
    assert jobs_reap_expired(now=timezone.now() + timedelta(hours=1)) == [job.pk]


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_an_infrastructure_failure_runs_again_from_the_latest_checkpoint(job, sent_jobs):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job

    _apply(
        _event(job, 0, EventType.STARTED),
        _artifact(job, 1, "ckpt-10", kind=EventType.CHECKPOINT, step=10),
        _artifact(job, 2, "ckpt-20", kind=EventType.CHECKPOINT, step=20),
        _event(
            job, 3, EventType.FAILED, error="StorageError: S3 timed out", **{RETRYABLE_FIELD: True}
        ),
    )
    job = Job.objects.get(pk=job.pk)
    assert job.state == "queued" and job.attempt == 2 and job.resume_checkpoint.endswith("ckpt-20")
    assert sent_jobs[-1][1][0]["attempt"] == 2
    retried = AuditEvent.objects.get(artifact_id=str(job.pk), action="job.retried")
    assert "S3 timed out" in retried.payload["reason"]


def test_a_retryable_failure_on_the_last_attempt_fails_the_job(job, settings):
    from controlplane.jobs.models import Job

    settings.JOB_MAX_ATTEMPTS = 1
    _apply(
        _event(job, 0, EventType.STARTED),
        _event(job, 1, EventType.FAILED, error="broker away", **{RETRYABLE_FIELD: True}),
    )
    job = Job.objects.get(pk=job.pk)
    assert job.state == "failed" and job.attempt == 1 and job.error == "broker away"


def test_a_failure_of_the_job_itself_is_not_retried(job):
    from controlplane.jobs.models import Job

    _apply(
        _event(job, 0, EventType.STARTED),
        _event(job, 1, EventType.FAILED, error="ValueError: bad column"),
    )
    job = Job.objects.get(pk=job.pk)
    assert job.state == "failed" and job.attempt == 1
