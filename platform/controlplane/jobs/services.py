"""Job life cycle: create, dispatch, apply worker events, cancel, reap lost jobs.

Invariants:
- A job's state changes only through a conditional UPDATE (`claim`), so two control
  workers applying events concurrently, or a redelivered event, cannot move it twice.
- An event is applied at most once: JobEventRecord's unique (job, attempt, seq) key.
- Events of an attempt other than the job's current one are dropped: after the reaper
  re-dispatches, a worker that was only slow (not dead) cannot change the job any more,
  and it learns so from the superseded marker in the object store.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.jobs.dispatch import send_job
from controlplane.jobs.kinds import validate_job_request
from controlplane.jobs.models import (
    ArtifactKind,
    Job,
    JobArtifact,
    JobEventRecord,
    JobMetric,
    JobState,
)
from controlplane.jobs.posttrain import POSTTRAIN_KINDS
from controlplane.projects.models import Project
from controlplane.storage import object_store
from workers.protocol import EventType, JobEvent, cancel_marker_key, superseded_marker_key

log = logging.getLogger(__name__)


class JobError(Exception):
    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.status = status


def _claim(job_id: int, *, attempt: int, from_states: set[str], **changes: Any) -> bool:
    return (
        Job.objects.filter(pk=job_id, attempt=attempt, state__in=from_states).update(**changes) == 1
    )


def _dispatch_after_commit(job: Job) -> None:
    job_id = job.pk

    def send() -> None:
        fresh = Job.objects.get(pk=job_id)
        if fresh.state == JobState.QUEUED:
            send_job(fresh)

    transaction.on_commit(send)


@transaction.atomic
def job_create(
    *, project: Project, kind: str, params: dict[str, Any], actor: User, experiment: str = ""
) -> Job:
    request = validate_job_request(project=project, kind=kind, params=params)
    now = timezone.now()
    job = Job.objects.create(
        project=project,
        kind=kind,
        experiment=experiment,
        queue=request.queue,
        params=request.params,
        inputs=request.inputs,
        created_by=actor,
        dispatched_at=now,
    )
    audit_append(
        project=project,
        actor=actor,
        action="job.created",
        artifact=job,
        payload={"kind": kind, "params": request.params, "inputs": request.inputs},
    )
    _dispatch_after_commit(job)
    return job


# Kinds whose work is checkpointed, so a failed run can go on from a checkpoint.
RESUMABLE_KINDS = {"pretrain", "diffusion", "gan", "vae", *POSTTRAIN_KINDS}


@transaction.atomic
def job_resume(*, job: Job, checkpoint: JobArtifact, actor: User) -> Job:
    """Run a failed job again from one of its checkpoints, as its next attempt."""
    job = Job.objects.select_for_update().select_related("project").get(pk=job.pk)
    if job.kind not in RESUMABLE_KINDS:
        raise JobError(f"{job.kind} jobs keep no checkpoints; start a new job instead", status=409)
    if job.state == JobState.CANCELLED:
        raise JobError(
            f"job {job.pk} was cancelled on purpose; start a new job (its checkpoints stay "
            "listed on its page) rather than resuming it",
            status=409,
        )
    if job.state != JobState.FAILED:
        raise JobError(f"job {job.pk} is {job.state}; only a failed job can be resumed", status=409)
    if checkpoint.job_id != job.pk or checkpoint.kind != ArtifactKind.CHECKPOINT:
        raise JobError(f"artifact {checkpoint.pk} is not a checkpoint of job {job.pk}", status=400)
    job.state = JobState.QUEUED
    job.attempt += 1
    job.resume_checkpoint = checkpoint.object_key
    job.error = ""
    job.finished_at = None
    job.lease_expires_at = None
    job.dispatched_at = timezone.now()
    job.save(
        update_fields=[
            "state",
            "attempt",
            "resume_checkpoint",
            "error",
            "finished_at",
            "lease_expires_at",
            "dispatched_at",
        ]
    )
    audit_append(
        project=job.project,
        actor=actor,
        action="job.resumed",
        artifact=job,
        payload={
            "attempt": job.attempt,
            "checkpoint": checkpoint.object_key,
            "step": checkpoint.step,
        },
    )
    _dispatch_after_commit(job)
    return job


@transaction.atomic
def job_cancel(*, job: Job, actor: User) -> Job:
    """Cooperative cancel: a queued job stops at once, a running one at its next check."""
    job = Job.objects.select_for_update().get(pk=job.pk)
    if job.is_terminal:
        raise JobError(f"job {job.pk} already {job.state}; nothing to cancel", status=409)
    now = timezone.now()
    if job.cancel_requested_at is None:
        job.cancel_requested_at = now
    # The marker tells the worker (which holds no database credentials) to stop.
    _put_marker(cancel_marker_key(job.pk), f"cancel requested by user {actor.pk}")
    if job.state == JobState.QUEUED:
        job.state = JobState.CANCELLED
        job.finished_at = now
        audit_append(
            project=job.project,
            actor=actor,
            action="job.cancelled",
            artifact=job,
            payload={"while": "queued"},
        )
    else:
        audit_append(
            project=job.project,
            actor=actor,
            action="job.cancel_requested",
            artifact=job,
            payload={},
        )
    job.save(update_fields=["state", "finished_at", "cancel_requested_at"])
    return job


def _put_marker(key: str, text: str) -> None:
    # Keys are never overwritten: a second cancel (or reap) finds the marker already there.
    store = object_store()
    if not store.exists(key):
        store.put_bytes(key, (text + "\n").encode())


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


def _latest_checkpoint(job: Job) -> str:
    checkpoint = job.artifacts.filter(kind=ArtifactKind.CHECKPOINT).order_by("-step", "-id").first()
    return checkpoint.object_key if checkpoint else ""


@transaction.atomic
def jobs_reap_expired(*, now: datetime | None = None) -> list[int]:
    """Re-dispatch running jobs whose lease ran out (their worker died or hung), and queued
    jobs no worker picked up within JOB_QUEUE_TIMEOUT_SECONDS (a worker took the message
    and died before it could report, or the message was lost).

    The new attempt resumes from the job's last checkpoint. The superseded marker makes
    a worker that is still alive stop the old attempt, and a stale message of it do nothing
    when it is finally delivered; after JOB_MAX_ATTEMPTS the job fails.
    """
    now = now or timezone.now()
    queued_before = now - timedelta(seconds=settings.JOB_QUEUE_TIMEOUT_SECONDS)
    expired = (
        Job.objects.select_for_update(skip_locked=True)
        .select_related("project")
        .filter(
            Q(state=JobState.RUNNING, lease_expires_at__lt=now)
            | Q(state=JobState.QUEUED, dispatched_at__lt=queued_before)
        )
    )
    reaped = []
    for job in expired:
        old_attempt = job.attempt
        reason = "lease expired" if job.state == JobState.RUNNING else "not picked up by a worker"
        _put_marker(superseded_marker_key(job.pk, old_attempt), reason)
        if old_attempt >= settings.JOB_MAX_ATTEMPTS:
            Job.objects.filter(pk=job.pk).update(
                state=JobState.FAILED,
                finished_at=now,
                lease_expires_at=None,
                error=f"worker lost {old_attempt} times ({reason}); giving up",
            )
            audit_append(
                project=job.project,
                actor=None,
                action="job.failed",
                artifact=job,
                payload={"attempt": old_attempt, "reason": f"{reason}, attempts exhausted"},
            )
            continue
        checkpoint = _latest_checkpoint(job)
        Job.objects.filter(pk=job.pk).update(
            state=JobState.QUEUED,
            attempt=F("attempt") + 1,
            lease_expires_at=None,
            dispatched_at=now,
            worker="",
            resume_checkpoint=checkpoint,
        )
        audit_append(
            project=job.project,
            actor=None,
            action="job.redispatched",
            artifact=job,
            payload={
                "attempt": old_attempt + 1,
                "reason": reason,
                "resume_checkpoint": checkpoint,
            },
        )
        _dispatch_after_commit(job)
        reaped.append(job.pk)
    return reaped
