"""`control.apply_events`: a batch of one attempt's events in one transaction, with every
guarantee of the one-event task (duplicates, gaps, poison events, held-back finishes,
superseded attempts, database errors)."""

from __future__ import annotations

import random

import pytest
from django.db import OperationalError

from tests.platform.jobs.eventload import SyntheticJob
from workers.protocol import EventType, JobEvent, event_batch

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # whole flows: make test runs them


def _event(job, seq, event_type, attempt=1, **payload) -> JobEvent:
    return JobEvent(job_id=job.pk, attempt=attempt, seq=seq, type=event_type, payload=payload)


def _metric(job, seq, step=None, attempt=1, **values) -> JobEvent:
    step = seq if step is None else step
    return _event(job, seq, EventType.METRIC, attempt, step=step, values=values or {"loss": 1.0})


def _artifact(job, seq, name, kind=EventType.ARTIFACT) -> JobEvent:
    key = f"{job.output_prefix}attempt-1/{name}"
    return _event(job, seq, kind, name=name, key=key, sha256="ab" * 32, size=3)


class _Retried(Exception):
    pass


@pytest.fixture
def retries(monkeypatch):
    """Records apply_events' retry calls instead of sending a retry message."""
    from controlplane.jobs.tasks import apply_events

    calls: list[dict] = []

    def retry(**options):
        calls.append(options)
        return _Retried()

    monkeypatch.setattr(apply_events, "retry", retry)
    return calls


def _send(*events: JobEvent, retry: int = 0):
    """Run the task body on a batch (events in the order given) as its `retry`-th try would."""
    from controlplane.jobs.tasks import apply_events

    apply_events.push_request(retries=retry)
    try:
        return apply_events.run({"events": [event.to_dict() for event in events]})
    finally:
        apply_events.pop_request()


def _seqs(job) -> list[int]:
    from controlplane.jobs.models import JobEventRecord

    return list(JobEventRecord.objects.filter(job=job).values_list("seq", flat=True))


def _stream(job):
    from controlplane.jobs.models import JobEventStream

    return JobEventStream.objects.get(job=job, attempt=1)


def test_the_batch_task_is_acked_late_and_given_back_when_its_process_dies():
    from controlplane.jobs.tasks import apply_events

    assert apply_events.acks_late is True
    assert apply_events.reject_on_worker_lost is True
    assert apply_events.acks_on_timeout is False
    assert apply_events.name == "control.apply_events"


def test_a_batch_costs_the_same_few_statements_whatever_its_size(
    job, django_assert_max_num_queries
):
    """Before: one transaction of ~7 statements per event, and one WAL flush each."""
    from controlplane.jobs.models import JobMetric

    _send(_event(job, 0, EventType.STARTED, worker="w1"))
    batch = [_metric(job, seq, loss=1.0 / seq, lr=0.1) for seq in range(1, 200)]
    batch.insert(100, _event(job, 200, EventType.HEARTBEAT))
    # savepoint + lock + stream + records + metrics + lease + stream update + release
    with django_assert_max_num_queries(10):
        assert _send(*batch) == 200
    assert JobMetric.objects.filter(job=job).count() == 2 * 199
    assert _stream(job).applied_count == 201


def test_duplicates_inside_and_across_batches_are_applied_once(job):
    from controlplane.jobs.models import JobMetric

    started = _event(job, 0, EventType.STARTED, worker="w1")
    assert _send(started, _metric(job, 1), _metric(job, 1), _metric(job, 2)) == 3
    # Re-sent after a gap request, overlapping what was applied, with a duplicate of its own.
    assert _send(_metric(job, 2), _metric(job, 3), _metric(job, 3), started, _metric(job, 4)) == 2
    assert _seqs(job) == [0, 1, 2, 3, 4]
    stream = _stream(job)
    assert (stream.applied_count, stream.max_seq, stream.gap_since) == (5, 4, None)
    assert JobMetric.objects.filter(job=job).count() == 4
    assert _send(started, _metric(job, 4)) == 0  # a whole batch redelivered: nothing to do


def test_a_step_logged_twice_in_one_batch_keeps_its_later_value(job):
    from controlplane.jobs.models import JobMetric

    _send(
        _event(job, 0, EventType.STARTED),
        _metric(job, 1, step=7, loss=3.0),
        _metric(job, 2, step=7, loss=2.0),  # a replayed step: the later value wins
    )
    assert JobMetric.objects.get(job=job, key="loss", step=7).value == 2.0


def test_a_batch_straddling_a_gap_fills_it(job, team, client):
    _send(_event(job, 0, EventType.STARTED), _metric(job, 1))
    _send(_metric(job, 4), _metric(job, 5))  # 2 and 3 lost on the way
    stream = _stream(job)
    assert stream.missing_seqs() == [2, 3] and stream.gap_since is not None
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "Gap: events #2, #3 missing" in page

    # The re-sent events arrive with newer ones, across the old maximum.
    assert _send(_metric(job, 2), _metric(job, 3), _metric(job, 5), _metric(job, 6)) == 3
    stream = _stream(job)
    assert stream.missing_seqs() == [] and stream.gap_since is None
    assert (stream.applied_count, stream.max_seq) == (7, 6)
    assert _seqs(job) == list(range(7))


def test_a_batch_with_a_hole_of_its_own_shows_the_gap(job):
    # The worker's buffer overflowed in an outage and dropped seq 3 from the send queue.
    _send(_event(job, 0, EventType.STARTED), _metric(job, 1), _metric(job, 2), _metric(job, 4))
    assert _stream(job).missing_seqs() == [3]


def test_a_poison_event_in_the_middle_parks_only_itself(job, team, client):
    from controlplane.jobs.models import DeadLetterEvent, Job, JobArtifact

    poison = _event(job, 2, EventType.METRIC, step="not a number", values={"loss": 1.0})
    applied = _send(
        _event(job, 0, EventType.STARTED, worker="w1"),
        _metric(job, 1),
        poison,
        _metric(job, 3),
        _artifact(job, 4, "model.bin"),
        _event(job, 5, EventType.PROGRESS, fraction=0.5, message="half"),
    )
    assert applied == 5
    assert _seqs(job) == [0, 1, 3, 4, 5]
    letter = DeadLetterEvent.objects.get()
    assert (letter.seq, letter.event) == (2, poison.to_dict()) and "ValueError" in letter.error
    assert JobArtifact.objects.filter(job=job).count() == 1
    job_row = Job.objects.get(pk=job.pk)
    assert (job_row.state, job_row.progress, job_row.progress_message) == ("running", 0.5, "half")
    assert _stream(job).missing_seqs() == [2]  # a gap: the worker is asked to re-send it

    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{job.pk}/").content.decode()
    assert "Events that could not be applied" in page and "not a number" in page


def test_an_event_the_database_refuses_parks_only_itself(job):
    """Fails only when the batch's metric points are written together (a negative step
    breaks the column's check): the batch is applied again event by event."""
    from controlplane.jobs.models import DeadLetterEvent, JobMetric

    _send(
        _event(job, 0, EventType.STARTED),
        _metric(job, 1),
        _event(job, 2, EventType.METRIC, step=-5, values={"loss": 1.0}),
        _metric(job, 3),
    )
    assert _seqs(job) == [0, 1, 3]
    assert DeadLetterEvent.objects.get().seq == 2
    assert sorted(JobMetric.objects.filter(job=job).values_list("step", flat=True)) == [1, 3]


def test_a_finish_waits_alone_while_the_rest_of_its_batch_is_applied(job, retries):
    from controlplane.jobs.models import Job

    finished = _event(job, 4, EventType.FINISHED, result={"ok": True})
    with pytest.raises(_Retried):
        _send(_event(job, 0, EventType.STARTED), _metric(job, 1), _metric(job, 3), finished)
    assert _seqs(job) == [0, 1, 3]  # applied, not held up by the finish
    assert retries[-1]["args"] == [event_batch([finished])]  # the finish, on its own
    assert retries[-1]["countdown"] == 0.5
    stream = _stream(job)
    assert stream.waiting_finish_seq == 4 and stream.missing_seqs() == [2]
    assert Job.objects.get(pk=job.pk).state == "running"

    _send(_artifact(job, 2, "report.json"))  # the lost event comes back
    assert _send(finished, retry=1) == 1
    job_row = Job.objects.get(pk=job.pk)
    assert job_row.state == "succeeded" and job_row.artifacts.get().name == "report.json"


def test_a_finish_after_its_last_events_in_the_same_batch_needs_no_wait(job):
    from controlplane.jobs.models import Job

    _send(_event(job, 0, EventType.STARTED))
    assert (
        _send(
            _artifact(job, 1, "a.bin"),
            _artifact(job, 2, "b.bin"),
            _event(job, 3, EventType.FINISHED),
        )
        == 3
    )
    assert Job.objects.get(pk=job.pk).state == "succeeded"


def test_a_finish_that_waited_in_vain_is_parked(job, retries, settings):
    from controlplane.jobs.models import DeadLetterEvent
    from controlplane.jobs.tasks import finish_wait_retries

    settings.EVENT_FINISH_WAIT_SECONDS = 1
    _send(_event(job, 0, EventType.STARTED))
    finished = _event(job, 2, EventType.FINISHED, result={})
    assert _send(finished, retry=finish_wait_retries()) == 0
    letter = DeadLetterEvent.objects.get()
    assert letter.seq == 2 and "gave up waiting" in letter.error


def test_writes_of_a_batch_that_ends_the_job_land_in_event_order(job):
    """Progress and lease writes wait for one statement, but never past the end of the job:
    a lease written after the failure would leave a failed job 'leased'."""
    from controlplane.jobs.models import Job

    _send(
        _event(job, 0, EventType.STARTED),
        _event(job, 1, EventType.PROGRESS, fraction=0.5, message="half"),
        _metric(job, 2),
        _event(job, 3, EventType.FAILED, error="out of memory"),
    )
    job_row = Job.objects.get(pk=job.pk)
    assert (job_row.state, job_row.lease_expires_at) == ("failed", None)
    assert (job_row.progress, job_row.progress_message) == (0.5, "half")


def test_a_superseded_attempt_s_batch_is_dropped(job):
    from controlplane.jobs.models import Job, JobEventRecord, JobMetric

    _send(_event(job, 0, EventType.STARTED))
    Job.objects.filter(pk=job.pk).update(attempt=2, state="queued")  # the reaper re-dispatched
    assert _send(_metric(job, 1), _event(job, 2, EventType.FINISHED, result={})) == 0
    assert JobEventRecord.objects.filter(job=job).count() == 1
    assert not JobMetric.objects.filter(job=job).exists()
    assert Job.objects.get(pk=job.pk).state == "queued"


def test_events_after_a_retryable_failure_in_the_same_batch_belong_to_a_stale_attempt(job):
    from controlplane.jobs.models import Job

    _send(_event(job, 0, EventType.STARTED))
    failed = _event(job, 1, EventType.FAILED, error="store away", retryable=True)
    assert _send(failed, _event(job, 2, EventType.HEARTBEAT)) == 1
    job_row = Job.objects.get(pk=job.pk)
    assert (job_row.attempt, job_row.state, job_row.lease_expires_at) == (2, "queued", None)
    assert _seqs(job) == [0, 1]


def test_a_batch_for_a_job_cancelled_meanwhile_changes_nothing_of_its_outcome(job, team):
    """The user cancelled the job while it was queued; the worker never saw the marker
    and its whole run arrives in one batch."""
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job, JobMetric
    from controlplane.jobs.services import job_cancel

    cancelled = job_cancel(job=Job.objects.get(pk=job.pk), actor=team.engineer)
    assert cancelled.state == "cancelled"
    late = [
        _event(job, 0, EventType.STARTED, worker="w1"),
        _metric(job, 1),
        _event(job, 2, EventType.PROGRESS, fraction=0.9, message="almost"),
        _event(job, 3, EventType.HEARTBEAT),
        _artifact(job, 4, "model.bin"),
        _event(job, 5, EventType.FINISHED, result={"ok": True}),
    ]
    assert _send(*late) == 6  # recorded once (a redelivery is a no-op) ...
    job_row = Job.objects.get(pk=job.pk)  # ... but the outcome stays the user's cancel
    assert (job_row.state, job_row.worker, job_row.started_at) == ("cancelled", "", None)
    assert job_row.lease_expires_at is None and job_row.progress == 0.0
    assert job_row.finished_at == cancelled.finished_at and job_row.result == cancelled.result
    assert JobMetric.objects.filter(job=job).count() == 1  # what it measured is kept
    terminal = AuditEvent.objects.filter(
        artifact_type="job", artifact_id=str(job.pk), action__in=["job.succeeded", "job.cancelled"]
    )
    assert list(terminal.values_list("action", flat=True)) == ["job.cancelled"]


def test_a_batch_applied_after_the_cancelled_event_leaves_the_job_cancelled(job, team):
    """A running job: its `cancelled` event was applied by another control process
    before the batch of events the worker sent just ahead of it."""
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_cancel

    _send(_event(job, 0, EventType.STARTED, worker="w1"))
    job_cancel(job=Job.objects.get(pk=job.pk), actor=team.engineer)
    _send(_event(job, 5, EventType.CANCELLED, reason="cancelled by user"))
    before = Job.objects.get(pk=job.pk)
    progress = _event(job, 2, EventType.PROGRESS, fraction=0.9, message="almost")
    assert (
        _send(_metric(job, 1), progress, _event(job, 3, EventType.HEARTBEAT), _metric(job, 4)) == 4
    )
    after = Job.objects.get(pk=job.pk)
    assert (after.state, after.lease_expires_at, after.progress) == (
        "cancelled",
        None,
        before.progress,
    )
    assert _stream(job).missing_seqs() == []


def test_a_database_error_retries_the_whole_batch(job, retries, monkeypatch):
    import controlplane.jobs.tasks as tasks
    from controlplane.jobs.models import DeadLetterEvent

    def refused(events, **options):
        raise OperationalError("connection to server failed: Connection refused")

    monkeypatch.setattr(tasks, "job_apply_events", refused)
    batch = [_event(job, 0, EventType.STARTED), _metric(job, 1), _metric(job, 2)]
    for number, countdown in [(0, 0.5), (3, 4.0), (9, 10.0)]:
        with pytest.raises(_Retried):
            _send(*batch, retry=number)
        assert retries[-1]["countdown"] == countdown and "args" not in retries[-1]
    assert _seqs(job) == [] and not DeadLetterEvent.objects.exists()
    monkeypatch.undo()
    assert _send(*batch, retry=10) == 3


def test_a_batch_that_exhausts_its_retries_parks_each_event(job, retries, monkeypatch, settings):
    import controlplane.jobs.tasks as tasks
    from controlplane.jobs.models import DeadLetterEvent

    def deadlock(events, **options):
        raise OperationalError("deadlock detected")

    monkeypatch.setattr(tasks, "job_apply_events", deadlock)
    settings.EVENT_MAX_RETRIES = 2
    assert _send(_metric(job, 5), _metric(job, 6), retry=2) is False
    monkeypatch.undo()
    letters = DeadLetterEvent.objects.order_by("seq")
    assert [letter.seq for letter in letters] == [5, 6]
    assert all("deadlock detected" in letter.error for letter in letters)


def test_a_malformed_event_in_a_batch_is_parked_and_the_rest_applied(job):
    from controlplane.jobs.models import DeadLetterEvent
    from controlplane.jobs.tasks import apply_events

    good = [_event(job, 0, EventType.STARTED).to_dict(), _metric(job, 2).to_dict()]
    broken = {**_metric(job, 1).to_dict(), "type": "exploded"}
    assert apply_events({"events": [good[0], broken, good[1]]}) == 2
    assert _seqs(job) == [0, 2]
    assert "unknown event type" in DeadLetterEvent.objects.get().error


def test_a_malformed_batch_is_parked_not_lost():
    from controlplane.jobs.models import DeadLetterEvent
    from controlplane.jobs.tasks import apply_events

    assert apply_events({"events": "nope"}) == 0
    assert apply_events([{"job_id": 1}]) == 0
    errors = list(DeadLetterEvent.objects.values_list("error", flat=True))
    assert len(errors) == 2 and all("malformed event batch" in error for error in errors)


def test_one_event_messages_of_old_workers_and_batches_mix(job):
    from controlplane.jobs.tasks import apply_event

    assert apply_event(_event(job, 0, EventType.STARTED).to_dict()) is True
    assert _send(_event(job, 0, EventType.STARTED), _metric(job, 1), _metric(job, 2)) == 2
    assert apply_event(_metric(job, 2).to_dict()) is False
    assert apply_event(_metric(job, 3).to_dict()) is True
    assert _seqs(job) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", [1, 2])
def test_batches_leave_exactly_what_one_event_at_a_time_leaves(team, make_upload, seed):
    """The same stream, applied one by one to one job and in random batches (shuffled
    inside, with re-sends) to another, ends in the same state of record."""
    from django.db.models import Q

    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job, JobArtifact, JobMetric
    from controlplane.jobs.services import job_apply_event, job_create

    upload = make_upload(team.project, team.engineer, b"a\nb\n")
    jobs = [
        job_create(
            project=team.project,
            kind="inspect",
            params={"upload_id": upload.pk},
            actor=team.engineer,
        )
        for _ in range(2)
    ]
    one_by_one, batched = (
        SyntheticJob(job_id=job.pk, output_prefix=job.output_prefix, steps=60) for job in jobs
    )
    for event in one_by_one.events():
        job_apply_event(event)
    rng = random.Random(seed)
    events = list(batched.events())
    position = 0
    while position < len(events):
        size = rng.randint(1, 25)
        batch = events[position : position + size]
        resent = rng.sample(events[:position], min(position, rng.randint(0, 3)))
        rng.shuffle(batch)
        _send(*batch, *resent)
        position += size

    def state_of(job_id: int) -> dict:
        job = Job.objects.get(pk=job_id)
        return {
            "job": (job.state, job.progress, job.progress_message, job.result, job.attempt),
            "metrics": list(JobMetric.objects.filter(job=job).values_list("key", "step", "value")),
            "artifacts": list(
                JobArtifact.objects.filter(job=job).values_list("kind", "name", "size", "step")
            ),
            "audit": list(
                AuditEvent.objects.filter(
                    Q(payload__job_id=job_id) | Q(artifact_type="job", artifact_id=str(job_id))
                )
                .order_by("seq")
                .values_list("action", "payload__size")
            ),
            "stream": (_stream(job).applied_count, _stream(job).max_seq),
        }

    expected, got = state_of(jobs[0].pk), state_of(jobs[1].pk)
    assert got["job"] == expected["job"] and got["job"][0] == "succeeded"
    assert got == expected
