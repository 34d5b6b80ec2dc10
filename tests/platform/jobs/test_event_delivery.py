"""The event path loses nothing: late acks, retries on database errors, dead letters,
cancel markers only after commit, health-checked connections (issue 12, items 1, 2, 6)."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from workers.protocol import EventType, JobEvent

pytestmark = pytest.mark.django_db


def _event(job, seq, event_type, attempt=1, **payload) -> dict:
    return JobEvent(
        job_id=job.pk, attempt=attempt, seq=seq, type=event_type, payload=payload
    ).to_dict()


class _Retried(Exception):
    pass


@pytest.fixture
def retries(monkeypatch):
    """Records the task's retry calls instead of sending a retry message."""
    from controlplane.jobs.tasks import apply_event

    calls: list[dict] = []

    def retry(**options):
        calls.append(options)
        return _Retried()

    monkeypatch.setattr(apply_event, "retry", retry)
    return calls


def _run_as_retry(number: int, event: dict):
    """Run the task body as its `number`-th retry would."""
    from controlplane.jobs.tasks import apply_event

    apply_event.push_request(retries=number)
    try:
        return apply_event.run(event)
    finally:
        apply_event.pop_request()


def test_the_apply_task_is_acked_late_and_given_back_when_its_process_dies():
    from controlplane.jobs.tasks import apply_event

    # `task_reject_on_worker_lost=True` as a decorator keyword was silently ignored (None).
    assert apply_event.acks_late is True
    assert apply_event.reject_on_worker_lost is True
    assert apply_event.acks_on_timeout is False


def test_control_worker_prefetches_one_and_gets_a_dead_workers_events_back_in_seconds(settings):
    options = settings.CELERY.get("broker_transport_options", {})
    assert settings.CELERY["worker_prefetch_multiplier"] == 1
    if settings.CELERY["broker_url"].startswith("redis://"):
        assert options["visibility_timeout"] <= 60
        # Its own unacked index: its short sweep never touches cpu/gpu job messages.
        assert options["unacked_index_key"] != "unacked_index"
        assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 5


def test_a_database_error_is_retried_with_backoff_not_dropped(job, retries, monkeypatch):
    import controlplane.jobs.tasks as tasks
    from controlplane.jobs.models import DeadLetterEvent, JobEventRecord

    def refused(event):
        raise OperationalError("connection to server failed: Connection refused")

    monkeypatch.setattr(tasks, "job_apply_event", refused)
    event = _event(job, 0, EventType.STARTED, worker="w1")
    for number, countdown in [(0, 0.5), (1, 1.0), (4, 8.0), (7, 10.0)]:
        with pytest.raises(_Retried):
            _run_as_retry(number, event)
        assert retries[-1]["countdown"] == countdown
    assert not DeadLetterEvent.objects.exists()
    monkeypatch.undo()  # the database is back: the next retry applies it
    assert _run_as_retry(8, event) is True
    assert JobEventRecord.objects.filter(job=job).count() == 1


def test_an_event_that_exhausts_its_retries_is_parked(job, retries, monkeypatch, settings):
    import controlplane.jobs.tasks as tasks
    from controlplane.jobs.models import DeadLetterEvent

    def deadlock(event):
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(tasks, "job_apply_event", deadlock)
    settings.EVENT_MAX_RETRIES = 3
    event = _event(job, 4, EventType.METRIC, step=1, values={"loss": 1.0})
    assert _run_as_retry(3, event) is False
    monkeypatch.undo()
    letter = DeadLetterEvent.objects.get()
    assert (letter.job_id, letter.attempt, letter.seq) == (job.pk, 1, 4)
    assert "deadlock detected" in letter.error and letter.event == event


def test_a_poison_event_is_parked_once_and_shown_on_the_job_page(job, team, client):
    from controlplane.jobs.models import DeadLetterEvent, JobEventRecord
    from controlplane.jobs.tasks import apply_event

    apply_event(_event(job, 0, EventType.STARTED, worker="w1"))
    poison = _event(job, 1, EventType.METRIC, step="not a number", values={"loss": 1.0})
    assert apply_event(poison) is False
    assert apply_event(poison) is False  # redelivered: the same letter, counted
    letter = DeadLetterEvent.objects.get()
    assert letter.attempts == 2 and "ValueError" in letter.error
    assert not JobEventRecord.objects.filter(job=job, seq=1).exists()

    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "Events that could not be applied" in page and "not a number" in page


def test_a_malformed_event_is_parked_not_lost(job):
    from controlplane.jobs.models import DeadLetterEvent
    from controlplane.jobs.tasks import apply_event

    broken = {**_event(job, 2, EventType.LOG, message="x"), "type": "exploded"}
    assert apply_event(broken) is False
    letter = DeadLetterEvent.objects.get()
    assert letter.job_id == job.pk and "unknown event type" in letter.error


def test_an_admin_applies_a_parked_event_again(job, team, client):
    from django.contrib.auth.models import User

    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import DeadLetterEvent, JobEventRecord
    from controlplane.jobs.services import event_park

    event = _event(job, 0, EventType.STARTED, worker="w1")
    letter = event_park(event=event, error="OperationalError: the database was away")
    admin = User.objects.create_superuser("root", "root@example.org", "pw-for-tests-1")
    client.force_login(admin)
    response = client.post(
        "/admin/jobs/deadletterevent/",
        {"action": "apply_again", "_selected_action": [letter.pk]},
    )
    assert response.status_code == 302
    letter.refresh_from_db()
    assert letter.resolved_at is not None
    assert JobEventRecord.objects.filter(job=job, seq=0).exists()
    assert AuditEvent.objects.filter(action="job.event_reapplied", actor_id=admin.pk).exists()
    assert not DeadLetterEvent.objects.filter(resolved_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)  # on_commit hooks run only on a real commit
def test_a_cancel_that_rolls_back_leaves_no_marker(job, team):
    from django.db import transaction

    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_cancel
    from controlplane.storage import object_store
    from workers.protocol import cancel_marker_key

    with pytest.raises(RuntimeError), transaction.atomic():
        job_cancel(job=job, actor=team.engineer)
        raise RuntimeError("the request failed after the cancel")
    assert not object_store().exists(cancel_marker_key(job.pk))
    assert Job.objects.get(pk=job.pk).cancel_requested_at is None

    job_cancel(job=job, actor=team.engineer)
    assert object_store().exists(cancel_marker_key(job.pk))


@pytest.mark.django_db(transaction=True)
def test_the_reaper_writes_a_cancel_marker_whose_write_failed(job, team, monkeypatch):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_apply_event, job_cancel, jobs_reap_expired, lifecycle
    from controlplane.storage import object_store
    from workers.protocol import cancel_marker_key

    job_apply_event(JobEvent.from_dict(_event(job, 0, EventType.STARTED)))

    def store_down(key, text):
        raise OSError("object store unreachable")

    monkeypatch.setattr(lifecycle, "put_marker", store_down)
    job_cancel(job=job, actor=team.engineer)  # answers; the marker is missing
    assert Job.objects.get(pk=job.pk).cancel_requested_at is not None
    assert not object_store().exists(cancel_marker_key(job.pk))
    monkeypatch.undo()
    jobs_reap_expired()
    assert object_store().exists(cancel_marker_key(job.pk))


@pytest.mark.django_db(transaction=True)  # a persistent connection, outside any test transaction
def test_a_connection_killed_by_a_database_restart_is_replaced_before_use():
    import psycopg
    from django.db import close_old_connections, connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    params = connection.get_connection_params()
    with psycopg.connect(
        host=params.get("host"),
        port=params.get("port"),
        user=params.get("user"),
        dbname=params["dbname"],
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    close_old_connections()  # what Django does when the next request starts
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
