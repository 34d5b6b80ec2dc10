"""What each worker event does to the job's state of record, and how its writes are batched.

A handler gets the `EventWrites` of the locked job and one event. Writes that many events
of a batch share wait in `EventWrites` for one statement each (the event records, the
metric points, the lease refresh); writes that change the job's state happen at once,
after what waits was flushed, so the database sees them in event order. Audit events
wait until the end of the batch: the audit chain is locked last (package docstring).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings

from controlplane.audit.services import audit_append
from controlplane.jobs.models import (
    ArtifactKind,
    Job,
    JobArtifact,
    JobEventRecord,
    JobMetric,
    JobState,
)
from workers.protocol import RETRYABLE_FIELD, EventType, JobEvent

log = logging.getLogger(__name__)

# A dense metric stream extends the lease at most this often (the lease lasts minutes):
# one UPDATE of the job row saved per event on the hot path.
_LEASE_REFRESH = timedelta(seconds=1)


class EventWrites:
    """The pending writes of events being applied to one locked job, in one transaction.

    Flushing keeps the effect of applying the events one by one (all at the same `now`):
    the last value of a metric step wins, the lease is refreshed once with the latest
    progress, and nothing waits across a handler that writes at once.
    """

    def __init__(self, job: Job, now: datetime) -> None:
        self.job = job
        self.now = now
        self._records: list[JobEventRecord] = []
        self._metrics: dict[tuple[str, int], JobMetric] = {}
        self._lease_due = False
        self._lease_changes: dict[str, Any] = {}
        self._audits: list[dict[str, Any]] = []

    def record(self, event: JobEvent) -> None:
        self._records.append(
            JobEventRecord(
                job=self.job,
                attempt=event.attempt,
                seq=event.seq,
                type=event.type,
                payload=event.payload,
                emitted_at=datetime.fromtimestamp(event.time, tz=UTC),
            )
        )

    def metric_points(self, points: list[JobMetric]) -> None:
        # Keyed by (key, step): one upsert cannot touch a row twice, and a step logged
        # twice keeps its later value, as applying the events one by one would.
        for point in points:
            self._metrics[(point.key, point.step)] = point

    def extend_lease(self, *, throttle: bool = True, **changes: Any) -> None:
        # The row is locked and loaded: a job that is not running needs no statement at all.
        if self.job.state != JobState.RUNNING:
            return
        last = self.job.last_heartbeat_at
        recent = last is not None and self.now - last < _LEASE_REFRESH
        if throttle and recent and not changes:
            return
        self._lease_due = True
        self._lease_changes.update(changes)

    def audit(
        self, *, action: str, artifact: Any, payload: dict[str, Any], actor: Any = None
    ) -> None:
        self._audits.append(
            {"action": action, "artifact": artifact, "payload": payload, "actor": actor}
        )

    def pending_audits(self) -> int:
        return len(self._audits)

    def discard(self, *, keep_audits: int, job: Job) -> None:
        """A savepoint rolled back: forget what was queued since (audits beyond the first
        `keep_audits`) and take the job row as reloaded after the rollback."""
        self.job = job
        self._records, self._metrics = [], {}
        self._lease_due, self._lease_changes = False, {}
        del self._audits[keep_audits:]

    def flush(self) -> None:
        """Write what waits, except the audit events (`flush_audits`, at the very end)."""
        if self._records:
            JobEventRecord.objects.bulk_create(self._records)
            self._records = []
        if self._metrics:
            # One INSERT ... ON CONFLICT DO UPDATE: a step replayed after a resume overwrites.
            JobMetric.objects.bulk_create(
                list(self._metrics.values()),
                update_conflicts=True,
                unique_fields=["job", "key", "step"],
                update_fields=["value", "recorded_at"],
            )
            self._metrics = {}
        if self._lease_due:
            changes = {
                "lease_expires_at": lease_until(self.now),
                "last_heartbeat_at": self.now,
                **self._lease_changes,
            }
            Job.objects.filter(pk=self.job.pk).update(**changes)
            for name, value in changes.items():
                setattr(self.job, name, value)
            self._lease_due, self._lease_changes = False, {}

    def flush_audits(self) -> None:
        """Append the batch's audit events, in event order: the chain row is locked last."""
        for audit in self._audits:
            audit_append(project=self.job.project, **audit)
        self._audits = []


def lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def claim(job: Job, *, attempt: int, from_states: set[str], **changes: Any) -> bool:
    claimed = (
        Job.objects.filter(pk=job.pk, attempt=attempt, state__in=from_states).update(**changes) == 1
    )
    if claimed:  # keep the locked instance in step for the handlers that follow
        for name, value in changes.items():
            setattr(job, name, value)
    return claimed


def _on_started(writes: EventWrites, event: JobEvent) -> None:
    job, now = writes.job, writes.now
    if claim(
        job,
        attempt=event.attempt,
        from_states={JobState.QUEUED},
        state=JobState.RUNNING,
        started_at=job.started_at or now,
        worker=str(event.payload.get("worker", ""))[:200],
        lease_expires_at=lease_until(now),
        last_heartbeat_at=now,
        # A later attempt reports the run it continued: the same id.
        tracking_run_id=str(event.payload.get("tracking_run_id") or job.tracking_run_id or "")[:64],
    ):
        writes.audit(
            action="job.started",
            artifact=job,
            payload={"attempt": event.attempt, "worker": event.payload.get("worker", "")},
        )


def _on_heartbeat(writes: EventWrites, event: JobEvent) -> None:
    writes.extend_lease(throttle=False)  # rare, and what the lease is for
    _record_usage(writes, event)


def _record_usage(writes: EventWrites, event: JobEvent) -> None:
    """The attempt's usage so far (heartbeats and terminal events carry it): its own
    table, written at once; its audit events wait with the batch's."""
    from controlplane.finops.usage import attempt_usage_apply

    attempt_usage_apply(job=writes.job, event=event, now=writes.now, audit=writes.audit)


def _on_progress(writes: EventWrites, event: JobEvent) -> None:
    fraction = float(event.payload.get("fraction", 0.0))
    writes.extend_lease(
        progress=max(0.0, min(1.0, fraction)),
        progress_message=str(event.payload.get("message", ""))[:300],
    )


def _on_metric(writes: EventWrites, event: JobEvent) -> None:
    step = int(event.payload["step"])
    recorded_at = datetime.fromtimestamp(event.time, tz=UTC)
    writes.metric_points(
        [
            JobMetric(
                job=writes.job,
                key=str(key)[:100],
                step=step,
                value=float(value),
                recorded_at=recorded_at,
            )
            for key, value in event.payload.get("values", {}).items()
        ]
    )
    writes.extend_lease()


def _on_artifact(writes: EventWrites, event: JobEvent, kind: str = ArtifactKind.OUTPUT) -> None:
    job = writes.job
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
        writes.audit(
            action=f"{kind}.created",
            artifact=artifact,
            payload={
                "job_id": job.pk,
                "object_key": key,
                "sha256": artifact.sha256,
                "size": artifact.size,
            },
        )
    writes.extend_lease()


def _on_checkpoint(writes: EventWrites, event: JobEvent) -> None:
    _on_artifact(writes, event, kind=ArtifactKind.CHECKPOINT)


def _on_log(writes: EventWrites, event: JobEvent) -> None:
    writes.extend_lease()


def _finish(writes: EventWrites, event: JobEvent, state: str, **changes: Any) -> bool:
    """Move the job to its final state once; True for the event that did it."""
    from controlplane.finops.quotas import on_job_terminal

    finished = claim(
        writes.job,
        attempt=event.attempt,
        from_states={JobState.QUEUED, JobState.RUNNING},
        state=state,
        finished_at=writes.now,
        lease_expires_at=None,
        **changes,
    )
    if finished:
        on_job_terminal(writes.job)  # a GPU job's slot in its project's quota frees
    return finished


def _audit_finish(writes: EventWrites, event: JobEvent, action: str, **details: Any) -> None:
    writes.audit(action=action, artifact=writes.job, payload={"attempt": event.attempt, **details})


def _create_derived_version(job: Job, result: dict) -> None:
    from controlplane.datasets.services import dataset_version_from_job
    from controlplane.gdpr.erasure import rebuild_finished

    dataset_version_from_job(job=job, result=result)
    rebuild_finished(job)  # an erasure waiting for this rebuild goes on


def _record_evaluation(job: Job, result: dict) -> list[dict[str, Any]]:
    from controlplane.registry.evaluations import evaluation_record

    return evaluation_record(job, result)


def _apply_erasure(job: Job, result: dict) -> list[dict[str, Any]]:
    from controlplane.gdpr.erasure import erasure_job_succeeded

    return erasure_job_succeeded(job, result)


# What a successful job of a kind leaves behind besides its result, in the same transaction;
# a hook may return audit events (action, artifact, payload), appended with the batch's.
_ON_SUCCESS = {
    "data_pipeline": _create_derived_version,
    "evaluate": _record_evaluation,
    "erasure": _apply_erasure,
}


def _register_model(writes: EventWrites, job: Job) -> None:
    """`register_as`: a new version of that model (rows only; the control task copies
    after commit). A registration that cannot be made leaves the job succeeded and says
    why in the audit trail."""
    from controlplane.registry.services import register_from_job

    register_from_job(job=job, audit=writes.audit)


def _on_finished(writes: EventWrites, event: JobEvent) -> None:
    _record_usage(writes, event)
    job = writes.job
    result = event.payload.get("result", {})
    if _finish(
        writes, event, JobState.SUCCEEDED, result=result, progress=1.0, progress_message="done"
    ):
        # Lock order: job row, then what the kind derives (its dataset row), then the audit
        # chain last (the batch's audit events are appended after every handler ran).
        if job.kind in _ON_SUCCESS:
            for audit in _ON_SUCCESS[job.kind](job, result) or ():
                writes.audit(**audit)
        _audit_finish(writes, event, "job.succeeded", progress=1.0, progress_message="done")
        if isinstance(job.params, dict) and job.params.get("register_as"):
            _register_model(writes, job)  # audited after the job's success


def _on_failed(writes: EventWrites, event: JobEvent) -> None:
    _record_usage(writes, event)  # of the attempt that failed, before a retry moves on
    job = writes.job
    error = str(event.payload.get("error", "failed"))[:5000]
    if event.payload.get(RETRYABLE_FIELD) is True and _retry_allowed(job):
        from controlplane.jobs.services.attempts import requeue_next_attempt

        # It audits at once (shared with the reaper): the batch's earlier audit events
        # go first, so the chain keeps the order of events.
        writes.flush_audits()
        requeue_next_attempt(
            job,
            now=writes.now,
            action="job.retried",
            reason=f"infrastructure error: {error}"[:1000],
        )
        # In step with the row: the rest of this attempt's batch is now a stale attempt's.
        job.attempt += 1
        job.state = JobState.QUEUED
        job.lease_expires_at = None
        return
    if _finish(writes, event, JobState.FAILED, error=error):
        _audit_finish(writes, event, "job.failed", error=error)


def _retry_allowed(job: Job) -> bool:
    """A retryable failure runs again unless attempts are used up or the user cancelled."""
    return (
        not job.is_terminal
        and job.attempt < settings.JOB_MAX_ATTEMPTS
        and job.cancel_requested_at is None
    )


def _on_cancelled(writes: EventWrites, event: JobEvent) -> None:
    _record_usage(writes, event)
    if _finish(writes, event, JobState.CANCELLED):
        _audit_finish(writes, event, "job.cancelled")


HANDLERS = {
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
# Events whose handlers only add to the pending writes; any other handler writes at once,
# so the pending writes are flushed before it runs.
DEFERRED_TYPES = frozenset(
    {EventType.HEARTBEAT, EventType.PROGRESS, EventType.METRIC, EventType.LOG}
)
