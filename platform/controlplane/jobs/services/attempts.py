"""Starting a job's next attempt: shared by the reaper (worker lost) and retryable failures."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F

from controlplane.audit.services import audit_append
from controlplane.jobs.models import ArtifactKind, Job, JobState
from controlplane.jobs.services.lifecycle import dispatch_after_commit


def latest_checkpoint(job: Job) -> str:
    checkpoint = job.artifacts.filter(kind=ArtifactKind.CHECKPOINT).order_by("-step", "-id").first()
    return checkpoint.object_key if checkpoint else ""


def requeue_next_attempt(job: Job, *, now: datetime, action: str, reason: str) -> str:
    """Queue the job again as attempt + 1, resuming from its latest checkpoint.

    The caller holds the job row lock (taken first, see the package docstring) and has
    decided that attempts remain. Returns the checkpoint the new attempt resumes from.
    """
    checkpoint = latest_checkpoint(job)
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
        action=action,
        artifact=job,
        payload={"attempt": job.attempt + 1, "reason": reason, "resume_checkpoint": checkpoint},
    )
    dispatch_after_commit(job)
    return checkpoint


def fail_for_good(job: Job, *, now: datetime, error: str, reason: str) -> None:
    """The job fails with no attempt to follow (the reaper's last lost attempt, a gang that
    failed for good): its row, the quota slot it held, and the audit event.

    The caller holds the job row lock and has checked the attempt is current.
    """
    from controlplane.finops.quotas import on_job_terminal

    Job.objects.filter(pk=job.pk).update(
        state=JobState.FAILED, finished_at=now, lease_expires_at=None, error=error[:5000]
    )
    job.state = JobState.FAILED
    on_job_terminal(job)
    audit_append(
        project=job.project,
        actor=None,
        action="job.failed",
        artifact=job,
        payload={"attempt": job.attempt, "reason": reason[:1000]},
    )
