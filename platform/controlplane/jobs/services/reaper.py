"""The reaper: jobs whose worker was lost are re-dispatched from their last checkpoint."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.jobs.models import (
    ArtifactKind,
    Job,
    JobState,
)
from controlplane.jobs.services.lifecycle import dispatch_after_commit, put_marker
from workers.protocol import superseded_marker_key

log = logging.getLogger(__name__)


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
        put_marker(superseded_marker_key(job.pk, old_attempt), reason)
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
        dispatch_after_commit(job)
        reaped.append(job.pk)
    return reaped
