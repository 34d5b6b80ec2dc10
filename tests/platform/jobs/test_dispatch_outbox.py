"""The dispatch outbox: an accepted job is never a 500 nor a lost dispatch when the broker is
down; the control task sends it, with backoff, once the broker takes messages again.

The broker here is the `sent_jobs` collector (or a collector that refuses, as kombu does
when Redis is down); test_dispatch_outbox_redis.py does the same against a real Redis.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

pytestmark = pytest.mark.django_db


@pytest.fixture
def upload(team, make_upload):
    return make_upload(team.project, team.engineer, b"a\nb\n")


@pytest.fixture
def broker(monkeypatch, sent_jobs):
    """A switchable broker: `broker.down = True` refuses sends like kombu on a dead Redis."""
    import controlplane.jobs.dispatch as dispatch

    class Broker:
        down = False
        refused = 0

        def send_task(self, name, args=None, queue=None, **kw):
            if self.down:
                self.refused += 1
                raise OperationalError(
                    "Error 111 connecting to 127.0.0.1:6379. Connection refused."
                )
            sent_jobs.append((name, args, queue))

    fake = Broker()
    fake.sent = sent_jobs
    monkeypatch.setattr(dispatch.app, "send_task", fake.send_task)
    # This process's memory of a failed send must not leak into other tests.
    monkeypatch.setattr(dispatch, "broker_health", dispatch.BrokerHealth())
    return fake


def _create_job(api, team, upload):
    return api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "inspect", "params": {"upload_id": upload.pk}},
        format="json",
    )


def _dispatches(job_id):
    from controlplane.jobs.models import JobDispatch

    return list(JobDispatch.objects.filter(job_id=job_id).order_by("attempt"))


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_a_job_is_committed_with_its_dispatch_and_sent_right_after(api, team, upload, broker):
    response = _create_job(api, team, upload)
    assert response.status_code == 201
    (dispatch,) = _dispatches(response.json()["id"])
    assert dispatch.state == "sent" and dispatch.attempt == 1 and dispatch.send_attempts == 1
    assert [args[0]["job_id"] for _name, args, _queue in broker.sent] == [response.json()["id"]]


@pytest.mark.django_db(transaction=True)
def test_broker_down_the_job_is_accepted_and_the_outbox_sends_it_when_it_returns(
    api, team, upload, broker, caplog
):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services.outbox import dispatch_outbox_send_due
    from controlplane.jobs.tasks import send_dispatch_outbox

    broker.down = True
    response = _create_job(api, team, upload)
    # Before the outbox: 500 although the job row was committed, and a client retrying on
    # 500 created a duplicate.
    assert response.status_code == 201 and response.json()["state"] == "queued"
    job_id = response.json()["id"]
    (dispatch,) = _dispatches(job_id)
    assert dispatch.state == "pending" and dispatch.send_attempts == 1
    assert "Connection refused" in dispatch.last_error
    assert "dispatch of job" in caplog.text and "failed" in caplog.text

    # Still down: the control task tries once per pass and backs off.
    assert send_dispatch_outbox()["failed"] == 0  # not due yet (backoff): nothing tried
    assert broker.refused == 1
    broker.down = False
    assert dispatch_outbox_send_due(now=dispatch.next_attempt_at)["sent"] == 1
    (dispatch,) = _dispatches(job_id)
    assert dispatch.state == "sent" and dispatch.send_attempts == 2 and dispatch.sent_at
    assert [args[0]["job_id"] for _n, args, _q in broker.sent] == [job_id]
    # The reaper's "not picked up" timeout counts from the real send.
    assert Job.objects.get(pk=job_id).dispatched_at >= dispatch.sent_at


@pytest.mark.django_db(transaction=True)
def test_failed_sends_back_off_exponentially_up_to_the_cap(api, team, upload, broker, settings):
    from controlplane.jobs.services.outbox import dispatch_send

    settings.DISPATCH_RETRY_MAX_SECONDS = 10
    broker.down = True
    job_id = _create_job(api, team, upload).json()["id"]
    delays = []
    for _ in range(6):
        (dispatch,) = _dispatches(job_id)
        now = dispatch.next_attempt_at
        assert dispatch_send(dispatch.pk, now=now) == "failed"
        (dispatch,) = _dispatches(job_id)
        delays.append((dispatch.next_attempt_at - now).total_seconds())
    assert delays == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]  # the 1 s one was the request's try
    assert dispatch.send_attempts == 7


@pytest.mark.django_db(transaction=True)
def test_a_row_of_a_cancelled_job_is_obsolete_and_never_sent(api, team, upload, broker):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_cancel
    from controlplane.jobs.services.outbox import dispatch_outbox_send_due

    broker.down = True
    job_id = _create_job(api, team, upload).json()["id"]
    job_cancel(job=Job.objects.get(pk=job_id), actor=team.engineer)
    broker.down = False
    counts = dispatch_outbox_send_due(now=timezone.now() + timedelta(minutes=1))
    assert counts["obsolete"] == 1 and counts["sent"] == 0
    assert [d.state for d in _dispatches(job_id)] == ["obsolete"]
    assert broker.sent == []


@pytest.mark.django_db(transaction=True)
def test_a_superseded_attempt_is_not_sent_and_the_new_one_is(api, team, upload, broker, settings):
    """The reaper keeps calling dispatch_after_commit(job) with its stale instance."""
    from controlplane.jobs.services import jobs_reap_expired
    from controlplane.jobs.services.outbox import dispatch_outbox_send_due

    settings.JOB_QUEUE_TIMEOUT_SECONDS = 600
    broker.down = True
    job_id = _create_job(api, team, upload).json()["id"]
    assert jobs_reap_expired(now=timezone.now() + timedelta(seconds=700)) == [job_id]
    broker.down = False
    dispatch_outbox_send_due(now=timezone.now() + timedelta(minutes=1))
    assert [(d.attempt, d.state) for d in _dispatches(job_id)] == [(1, "obsolete"), (2, "sent")]
    assert [args[0]["attempt"] for _n, args, _q in broker.sent] == [2]


@pytest.mark.django_db(transaction=True)
def test_a_resumed_job_gets_a_dispatch_for_its_new_attempt(team, broker):
    from controlplane.jobs.models import ArtifactKind, Job, JobArtifact, JobState
    from controlplane.jobs.services import job_resume

    job = Job.objects.create(
        project=team.project, kind="diffusion", state=JobState.FAILED, created_by=team.engineer
    )
    checkpoint = JobArtifact.objects.create(
        job=job,
        kind=ArtifactKind.CHECKPOINT,
        name="step-10.pt",
        step=10,
        object_key=f"{job.output_prefix}attempt-1/step-10.pt",
        sha256="0" * 64,
        size=1,
    )
    job_resume(job=job, checkpoint=checkpoint, actor=team.engineer)
    assert [(d.attempt, d.state) for d in _dispatches(job.pk)] == [(2, "sent")]
    assert broker.sent[-1][1][0]["resume_checkpoint"] == checkpoint.object_key


def test_a_rolled_back_job_leaves_no_dispatch(team, upload, broker):
    from django.db import transaction

    from controlplane.jobs.models import JobDispatch
    from controlplane.jobs.services import job_create

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        job_create(
            project=team.project,
            kind="inspect",
            params={"upload_id": upload.pk},
            actor=team.engineer,
        )
        raise Abort
    assert not JobDispatch.objects.exists() and broker.sent == []


@pytest.mark.django_db(transaction=True)
def test_concurrent_senders_send_each_row_once(api, team, upload, broker, monkeypatch):
    """Two control workers (and the web process) may pass over the same rows at once."""
    from django.db import connection

    import controlplane.jobs.dispatch as dispatch
    from controlplane.jobs.services.outbox import dispatch_outbox_send_due

    broker.down = True
    job_ids = [_create_job(api, team, upload).json()["id"] for _ in range(5)]
    broker.down = False
    original = dispatch.app.send_task

    def slow_send(*args, **kwargs):
        time.sleep(0.05)  # widen the window in which a second sender could take the row
        return original(*args, **kwargs)

    monkeypatch.setattr(dispatch.app, "send_task", slow_send)
    later = timezone.now() + timedelta(minutes=1)
    errors = []

    def sender():
        try:
            dispatch_outbox_send_due(now=later)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    sent_ids = sorted(args[0]["job_id"] for _n, args, _q in broker.sent)
    assert sent_ids == sorted(job_ids)


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_starts_a_job_while_the_broker_is_down(team, client, upload, broker):
    from controlplane.jobs.models import Job

    broker.down = True
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/uploads/{upload.pk}/inspect/",
        {"upload_id": upload.pk, "preview_records": 3},
    )
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/jobs/{job.pk}/")
    assert [d.state for d in _dispatches(job.pk)] == ["pending"]


@pytest.mark.django_db(transaction=True)
def test_a_second_request_during_an_outage_does_not_wait_for_the_broker(api, team, upload, broker):
    """After a failed send, the process leaves the next ones to the outbox for a while."""
    broker.down = True
    _create_job(api, team, upload)
    second = _create_job(api, team, upload)
    assert second.status_code == 201 and broker.refused == 1
    (dispatch,) = _dispatches(second.json()["id"])
    assert dispatch.state == "pending" and dispatch.send_attempts == 0
