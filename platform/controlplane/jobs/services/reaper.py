"""The reaper: jobs whose worker was lost are re-dispatched from their last checkpoint.

One pass (beat, every REAPER_INTERVAL_SECONDS) also asks workers to re-send the events of
lasting gaps and writes again the cancel markers whose post-commit write failed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from controlplane.jobs.models import Job, JobState
from controlplane.jobs.services.attempts import fail_for_good, requeue_next_attempt
from controlplane.jobs.services.delivery import (
    CompletionRecordUnreadable,
    events_request_resends,
    job_reconcile_outputs,
)
from controlplane.jobs.services.lifecycle import put_marker
from controlplane.storage import object_store
from workers.protocol import cancel_marker_key, superseded_marker_key
from workers.storage import StorageError

log = logging.getLogger(__name__)


def _expired(now: datetime) -> Q:
    queued_before = now - timedelta(seconds=settings.JOB_QUEUE_TIMEOUT_SECONDS)
    return Q(state=JobState.RUNNING, lease_expires_at__lt=now) | Q(
        state=JobState.QUEUED, dispatched_at__lt=queued_before, held_for=""
    )  # a job held for its project's quota is not sent yet: nothing to reap


def jobs_reap_expired(*, now: datetime | None = None) -> list[int]:
    """Re-dispatch running jobs whose lease ran out (their worker died or hung), and queued
    jobs no worker picked up within JOB_QUEUE_TIMEOUT_SECONDS (a worker took the message
    and died before it could report, or the message was lost). Returns the re-dispatched.

    A running attempt whose completion record is in the store did finish (its `finished`
    event was lost): it is finished from the record, never re-run. Otherwise the new
    attempt resumes from the job's last checkpoint; the superseded marker makes a worker
    that is still alive stop the old attempt, and a stale message of it do nothing when it
    is finally delivered; after JOB_MAX_ATTEMPTS the job fails.
    """
    now = now or timezone.now()
    candidates = list(Job.objects.filter(_expired(now)).values_list("pk", flat=True)[:500])
    reaped = []
    for job_id in candidates:
        try:
            if _reap_one(job_id, now):
                reaped.append(job_id)
        except Exception:  # noqa: BLE001 - one bad job must not stop the pass for the others
            log.exception("reaping job %s failed; tried again next pass", job_id)
    events_request_resends(now=now)
    _rewrite_missing_cancel_markers()
    from controlplane.jobs.gang import gangs_reap  # multi-node attempts: nodes' own leases

    return reaped + gangs_reap(now=now)


@transaction.atomic
def _reap_one(job_id: int, now: datetime) -> bool:
    # Job row first (the one lock order); skip_locked: an event being applied to it right
    # now proves it is alive, and the next pass looks again.
    job = (
        Job.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("project")
        .filter(_expired(now), pk=job_id)
        .first()
    )
    if job is None:
        return False
    old_attempt = job.attempt
    if job.state == JobState.RUNNING:
        try:
            if job_reconcile_outputs(job_id=job.pk, attempt=old_attempt, finish=True):
                return False
        except CompletionRecordUnreadable as error:
            # Whether it finished is unknown: declaring it lost could re-run a success.
            log.warning("job %s not reaped: completion record unreadable (%s)", job_id, error)
            return False
    reason = "lease expired" if job.state == JobState.RUNNING else "not picked up by a worker"
    put_marker(superseded_marker_key(job.pk, old_attempt), reason)
    if old_attempt >= settings.JOB_MAX_ATTEMPTS:
        fail_for_good(
            job,
            now=now,
            error=f"worker lost {old_attempt} times ({reason}); giving up",
            reason=f"{reason}, attempts exhausted",
        )
        return False
    requeue_next_attempt(job, now=now, action="job.redispatched", reason=reason)
    return True


def _rewrite_missing_cancel_markers() -> None:
    """job_cancel writes its marker after commit; a store blip then must not lose it."""
    cancelling = Job.objects.filter(
        cancel_requested_at__isnull=False, state__in=[JobState.QUEUED, JobState.RUNNING]
    ).values_list("pk", flat=True)[:500]
    for job_id in cancelling:
        try:
            if not object_store().exists(cancel_marker_key(job_id)):
                put_marker(cancel_marker_key(job_id), "cancel requested (marker written again)")
        except StorageError as error:
            log.warning("cancel marker of job %s not written: %s", job_id, error)
