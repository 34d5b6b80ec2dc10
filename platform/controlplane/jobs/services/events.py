"""Applying worker events to the job state of record (see the package docstring).

The hot path: every event of every running job comes through `job_apply_event`, so it
costs a handful of statements: lock the job row, read the attempt's stream, insert the
record, advance the stream, apply the handler.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.jobs.models import (
    ArtifactKind,
    Job,
    JobArtifact,
    JobEventRecord,
    JobEventStream,
    JobMetric,
    JobState,
)
from workers.protocol import RETRYABLE_FIELD, EventType, JobEvent

log = logging.getLogger(__name__)


class EventNotReady(Exception):
    """A terminal event that must wait: earlier events of its attempt are not applied yet.

    Not an error: with several control processes events are applied out of order, and a
    `finished` may overtake the last artifact. The caller retries it a little later.
    """

    def __init__(self, event: JobEvent, missing: list[int]):
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        super().__init__(
            f"{event.type} #{event.seq} of job {event.job_id} attempt {event.attempt} waits "
            f"for event(s) {shown}"
        )
        self.missing = missing


def lock_job(job_id: int) -> Job | None:
    """The job row, locked until the transaction ends: the first lock of every job path.

    No join (a join would lock the project row too, and every event of a project would
    wait for every other); the project is loaded only by the few events that audit. The
    JSON columns no event handler reads are left out of the hot path.
    """
    return (
        Job.objects.select_for_update()
        .defer("params", "inputs", "result")
        .filter(pk=job_id)
        .first()
    )


def stream_of(job: Job, attempt: int) -> JobEventStream:
    """The attempt's event stream (created with its first event); the job row must be locked."""
    stream = JobEventStream.objects.filter(job=job, attempt=attempt).first()
    if stream is None:
        stream = JobEventStream.objects.create(job=job, attempt=attempt)
    return stream


@transaction.atomic
def job_apply_event(event: JobEvent) -> bool:
    """Apply one worker event to the job's state of record; idempotent.

    Returns False when the event changed nothing (duplicate, stale attempt, unknown job).
    Raises EventNotReady for a `finished` whose earlier events are not all applied, and
    lets database errors through (the control task retries them).
    """
    job = lock_job(event.job_id)
    if job is None:
        log.warning("event for unknown job %s dropped", event.job_id)
        return False
    if event.attempt != job.attempt:
        log.info("event of superseded attempt %s of job %s dropped", event.attempt, job.pk)
        return False
    stream = stream_of(job, event.attempt)
    if _already_applied(stream, event.seq):
        return False
    if event.type == EventType.FINISHED and not _earlier_events_applied(stream, event.seq):
        raise EventNotReady(event, stream.missing_seqs(below=event.seq))
    now = timezone.now()
    JobEventRecord.objects.create(
        job=job,
        attempt=event.attempt,
        seq=event.seq,
        type=event.type,
        payload=event.payload,
        emitted_at=datetime.fromtimestamp(event.time, tz=UTC),
    )
    _advance(stream, event.seq, now)
    _HANDLERS[event.type](job, event, now)
    return True


def stream_note_waiting_finish(*, job_id: int, attempt: int, seq: int) -> None:
    """Remember a `finished` that has to wait: the events before it are then a visible gap
    (and asked for again by the reaper) even when they were the attempt's last ones."""
    with transaction.atomic():
        job = lock_job(job_id)  # the lock order: job row first
        if job is None or job.attempt != attempt:
            return
        stream = stream_of(job, attempt)
        if stream.waiting_finish_seq == seq:
            return
        stream.waiting_finish_seq = seq
        if stream.has_gap and stream.gap_since is None:
            stream.gap_since = timezone.now()
        stream.save(update_fields=["waiting_finish_seq", "gap_since"])


def _already_applied(stream: JobEventStream, seq: int) -> bool:
    """From the stream alone in the common cases; a query only below a gap.

    The job row lock is held, so no other transaction inserts a record of this job
    meanwhile (the unique (job, attempt, seq) key stays as the backstop).
    """
    if seq > stream.max_seq:
        return False
    if not stream.has_gap:
        return True
    return JobEventRecord.objects.filter(
        job_id=stream.job_id, attempt=stream.attempt, seq=seq
    ).exists()


def _earlier_events_applied(stream: JobEventStream, seq: int) -> bool:
    if stream.outputs_reconciled_at is not None:
        # The completion record supplied every artifact and checkpoint of the attempt; what
        # may still be missing (metrics, logs) is shown as a gap, not worth a re-run.
        return True
    if stream.max_seq < seq:
        return stream.applied_count == seq
    return (
        JobEventRecord.objects.filter(
            job_id=stream.job_id, attempt=stream.attempt, seq__lt=seq
        ).count()
        == seq
    )


def _advance(stream: JobEventStream, seq: int, now: datetime) -> None:
    stream.max_seq = max(stream.max_seq, seq)
    stream.applied_count += 1
    if not stream.has_gap:
        stream.gap_since = None
    elif stream.gap_since is None:
        stream.gap_since = now
    stream.save(update_fields=["max_seq", "applied_count", "gap_since"])


def _claim(job: Job, *, attempt: int, from_states: set[str], **changes: Any) -> bool:
    claimed = (
        Job.objects.filter(pk=job.pk, attempt=attempt, state__in=from_states).update(**changes) == 1
    )
    if claimed:  # keep the locked instance in step for the handlers that follow
        for name, value in changes.items():
            setattr(job, name, value)
    return claimed


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def _on_started(job: Job, event: JobEvent, now: datetime) -> None:
    if _claim(
        job,
        attempt=event.attempt,
        from_states={JobState.QUEUED},
        state=JobState.RUNNING,
        started_at=job.started_at or now,
        worker=str(event.payload.get("worker", ""))[:200],
        lease_expires_at=_lease_until(now),
        last_heartbeat_at=now,
        # A later attempt reports the run it continued: the same id.
        tracking_run_id=str(event.payload.get("tracking_run_id") or job.tracking_run_id or "")[:64],
    ):
        audit_append(
            project=job.project,
            actor=None,
            action="job.started",
            artifact=job,
            payload={"attempt": event.attempt, "worker": event.payload.get("worker", "")},
        )


# A dense metric stream extends the lease at most this often (the lease lasts minutes):
# one UPDATE of the job row saved per event on the hot path.
_LEASE_REFRESH = timedelta(seconds=1)


def _extend_lease(
    job: Job, event: JobEvent, now: datetime, *, throttle: bool = True, **extra: Any
) -> None:
    # The row is locked and loaded: a job that is not running needs no statement at all.
    if job.state != JobState.RUNNING:
        return
    recent = job.last_heartbeat_at and now - job.last_heartbeat_at < _LEASE_REFRESH
    if throttle and recent and not extra:
        return
    Job.objects.filter(pk=job.pk).update(
        lease_expires_at=_lease_until(now), last_heartbeat_at=now, **extra
    )


def _on_heartbeat(job: Job, event: JobEvent, now: datetime) -> None:
    _extend_lease(job, event, now, throttle=False)  # rare, and what the lease is for


def _on_progress(job: Job, event: JobEvent, now: datetime) -> None:
    fraction = float(event.payload.get("fraction", 0.0))
    _extend_lease(
        job,
        event,
        now,
        progress=max(0.0, min(1.0, fraction)),
        progress_message=str(event.payload.get("message", ""))[:300],
    )


def _on_metric(job: Job, event: JobEvent, now: datetime) -> None:
    step = int(event.payload["step"])
    recorded_at = datetime.fromtimestamp(event.time, tz=UTC)
    # One INSERT ... ON CONFLICT DO UPDATE for every key of the step: a step replayed after
    # a resume overwrites its value.
    JobMetric.objects.bulk_create(
        [
            JobMetric(
                job=job, key=str(key)[:100], step=step, value=float(value), recorded_at=recorded_at
            )
            for key, value in event.payload.get("values", {}).items()
        ],
        update_conflicts=True,
        unique_fields=["job", "key", "step"],
        update_fields=["value", "recorded_at"],
    )
    _extend_lease(job, event, now)


def _on_artifact(job: Job, event: JobEvent, now: datetime, kind: str = ArtifactKind.OUTPUT) -> None:
    key = str(event.payload["key"])
    if not key.startswith(job.output_prefix):
        log.warning("job %s reported artifact %s outside its prefix; ignored", job.pk, key)
        return
    artifact, created = JobArtifact.objects.get_or_create(
        object_key=key,
        defaults={
            "job": job,
            "kind": kind,
            "name": str(event.payload.get("name", key.rsplit("/", 1)[-1]))[:200],
            "sha256": str(event.payload.get("sha256", "")),
            "size": int(event.payload.get("size", 0)),
            "step": event.payload.get("step"),
        },
    )
    if created:
        audit_append(
            project=job.project,
            actor=None,
            action=f"{kind}.created",
            artifact=artifact,
            payload={
                "job_id": job.pk,
                "object_key": key,
                "sha256": artifact.sha256,
                "size": artifact.size,
            },
        )
    _extend_lease(job, event, now)


def _on_checkpoint(job: Job, event: JobEvent, now: datetime) -> None:
    _on_artifact(job, event, now, kind=ArtifactKind.CHECKPOINT)


def _on_log(job: Job, event: JobEvent, now: datetime) -> None:
    _extend_lease(job, event, now)


def _finish(job: Job, event: JobEvent, now: datetime, state: str, **changes: Any) -> bool:
    """Move the job to its final state once; True for the event that did it."""
    return _claim(
        job,
        attempt=event.attempt,
        from_states={JobState.QUEUED, JobState.RUNNING},
        state=state,
        finished_at=now,
        lease_expires_at=None,
        **changes,
    )


def _audit_finish(job: Job, event: JobEvent, action: str, **details: Any) -> None:
    audit_append(
        project=job.project,
        actor=None,
        action=action,
        artifact=job,
        payload={"attempt": event.attempt, **details},
    )


def _create_derived_version(job: Job, result: dict) -> None:
    from controlplane.datasets.services import dataset_version_from_job

    dataset_version_from_job(job=job, result=result)


# What a successful job of a kind leaves behind besides its result, in the same transaction.
_ON_SUCCESS = {"data_pipeline": _create_derived_version}


def _on_finished(job: Job, event: JobEvent, now: datetime) -> None:
    result = event.payload.get("result", {})
    if _finish(
        job, event, now, JobState.SUCCEEDED, result=result, progress=1.0, progress_message="done"
    ):
        # Lock order: job row, then what the kind derives (its dataset row), then the audit
        # chain last; auditing first would take the chain before the dataset row, the
        # reverse of every dataset service.
        if job.kind in _ON_SUCCESS:
            _ON_SUCCESS[job.kind](job, result)
        _audit_finish(job, event, "job.succeeded", progress=1.0, progress_message="done")


def _on_failed(job: Job, event: JobEvent, now: datetime) -> None:
    error = str(event.payload.get("error", "failed"))[:5000]
    if event.payload.get(RETRYABLE_FIELD) is True and _retry_allowed(job):
        from controlplane.jobs.services.attempts import requeue_next_attempt

        requeue_next_attempt(
            job,
            now=now,
            action="job.retried",
            reason=f"infrastructure error: {error}"[:1000],
        )
        return
    if _finish(job, event, now, JobState.FAILED, error=error):
        _audit_finish(job, event, "job.failed", error=error)


def _retry_allowed(job: Job) -> bool:
    """A retryable failure runs again unless attempts are used up or the user cancelled."""
    return (
        not job.is_terminal
        and job.attempt < settings.JOB_MAX_ATTEMPTS
        and job.cancel_requested_at is None
    )


def _on_cancelled(job: Job, event: JobEvent, now: datetime) -> None:
    if _finish(job, event, now, JobState.CANCELLED):
        _audit_finish(job, event, "job.cancelled")


_HANDLERS = {
    EventType.STARTED: _on_started,
    EventType.HEARTBEAT: _on_heartbeat,
    EventType.PROGRESS: _on_progress,
    EventType.METRIC: _on_metric,
    EventType.ARTIFACT: _on_artifact,
    EventType.CHECKPOINT: _on_checkpoint,
    EventType.LOG: _on_log,
    EventType.FINISHED: _on_finished,
    EventType.FAILED: _on_failed,
    EventType.CANCELLED: _on_cancelled,
}
