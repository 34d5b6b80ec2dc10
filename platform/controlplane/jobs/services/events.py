"""Applying worker events to the job state of record (see the package docstring)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.jobs.models import (
    ArtifactKind,
    Job,
    JobArtifact,
    JobEventRecord,
    JobMetric,
    JobState,
)
from workers.protocol import EventType, JobEvent

log = logging.getLogger(__name__)


def _claim(job_id: int, *, attempt: int, from_states: set[str], **changes: Any) -> bool:
    return (
        Job.objects.filter(pk=job_id, attempt=attempt, state__in=from_states).update(**changes) == 1
    )


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def _record(job: Job, event: JobEvent) -> bool:
    """Store the event once; False if it was applied before (a redelivered message)."""
    try:
        with transaction.atomic():
            JobEventRecord.objects.create(
                job=job,
                attempt=event.attempt,
                seq=event.seq,
                type=event.type,
                payload=event.payload,
                emitted_at=datetime.fromtimestamp(event.time, tz=UTC),
            )
    except IntegrityError:
        return False
    return True


@transaction.atomic
def job_apply_event(event: JobEvent) -> bool:
    """Apply one worker event to the job's state of record; idempotent.

    Returns False when the event changed nothing (duplicate, stale attempt, unknown job).
    """
    job = Job.objects.select_related("project").filter(pk=event.job_id).first()
    if job is None:
        log.warning("event for unknown job %s dropped", event.job_id)
        return False
    if event.attempt != job.attempt:
        log.info("event of superseded attempt %s of job %s dropped", event.attempt, job.pk)
        return False
    if not _record(job, event):
        return False
    now = timezone.now()
    handler = _HANDLERS[event.type]
    handler(job, event, now)
    return True


def _on_started(job: Job, event: JobEvent, now: datetime) -> None:
    if _claim(
        job.pk,
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


def _extend_lease(job: Job, event: JobEvent, now: datetime, **extra: Any) -> None:
    Job.objects.filter(pk=job.pk, attempt=event.attempt, state=JobState.RUNNING).update(
        lease_expires_at=_lease_until(now), last_heartbeat_at=now, **extra
    )


def _on_heartbeat(job: Job, event: JobEvent, now: datetime) -> None:
    _extend_lease(job, event, now)


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
    for key, value in event.payload.get("values", {}).items():
        JobMetric.objects.update_or_create(
            job=job,
            key=str(key)[:100],
            step=step,
            defaults={
                "value": float(value),
                "recorded_at": datetime.fromtimestamp(event.time, tz=UTC),
            },
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


def _finish(
    job: Job, event: JobEvent, now: datetime, state: str, action: str, **changes: Any
) -> bool:
    """Move the job to its final state once; True for the event that did it."""
    if _claim(
        job.pk,
        attempt=event.attempt,
        from_states={JobState.QUEUED, JobState.RUNNING},
        state=state,
        finished_at=now,
        lease_expires_at=None,
        **changes,
    ):
        audit_append(
            project=job.project,
            actor=None,
            action=action,
            artifact=job,
            payload={
                "attempt": event.attempt,
                **{k: v for k, v in changes.items() if k != "result"},
            },
        )
        return True
    return False


def _create_derived_version(job: Job, result: dict) -> None:
    from controlplane.datasets.services import dataset_version_from_job

    dataset_version_from_job(job=job, result=result)


# What a successful job of a kind leaves behind besides its result, in the same transaction.
_ON_SUCCESS = {"data_pipeline": _create_derived_version}


def _on_finished(job: Job, event: JobEvent, now: datetime) -> None:
    result = event.payload.get("result", {})
    if (
        _finish(
            job,
            event,
            now,
            JobState.SUCCEEDED,
            "job.succeeded",
            result=result,
            progress=1.0,
            progress_message="done",
        )
        and job.kind in _ON_SUCCESS
    ):
        _ON_SUCCESS[job.kind](job, result)


def _on_failed(job: Job, event: JobEvent, now: datetime) -> None:
    _finish(
        job,
        event,
        now,
        JobState.FAILED,
        "job.failed",
        error=str(event.payload.get("error", "failed"))[:5000],
    )


def _on_cancelled(job: Job, event: JobEvent, now: datetime) -> None:
    _finish(job, event, now, JobState.CANCELLED, "job.cancelled")


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
