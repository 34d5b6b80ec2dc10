"""The dispatch outbox: a job attempt is sent to its worker queue at least once, even
across a broker outage.

Invariants:
- A JobDispatch row is written in the same transaction as the job change that needs a
  worker (create, resume, re-dispatch), so a committed QUEUED attempt always has a row,
  and a rolled-back one never has.
- A row is sent only while it names the job's current attempt and the job is QUEUED;
  otherwise it is marked obsolete (a superseded or cancelled attempt is never sent).
- Senders take a row by a conditional UPDATE of `next_attempt_at` (a claim that lapses
  after CLAIM_SECONDS), never by a lock held across the broker call: the web process's
  immediate send and any number of control workers never send the same row twice at
  once, and a sender that dies mid-send only delays the row.
- Delivery is at least once: a send whose "sent" mark is lost (the database went away
  just after the broker took the message) is sent again. A duplicate message of the same
  attempt is what a broker redelivery would be too; workers already tolerate it.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from controlplane.jobs.capacity import (
    CAPACITY_RECHECK_SECONDS,
    HELD_FOR_CAPACITY,
    capacity_hold_reason,
    hold_for_capacity,
)
from controlplane.jobs.dispatch import broker_recently_failed, send_job
from controlplane.jobs.models import DispatchState, Job, JobDispatch, JobState

log = logging.getLogger(__name__)

# How long a sender owns a row it claimed; a broker call is bounded far below this.
CLAIM_SECONDS = 30
# Rows looked at per pass of the control task (the rest wait for the next pass, seconds later).
PASS_LIMIT = 200


class DispatchOutcome(enum.StrEnum):
    SENT = "sent"
    OBSOLETE = "obsolete"
    FAILED = "failed"  # kept pending, retried after its backoff
    HELD = "held"  # no live worker can run it yet: kept pending (jobs/capacity.py)
    SKIPPED = "skipped"  # not due, already sent, or claimed by another sender


def retry_delay(send_attempts: int) -> timedelta:
    """Exponential backoff capped low: a broker back from an outage gets the job within
    seconds, and a long outage costs one failed connect per row every few seconds."""
    seconds = min(float(settings.DISPATCH_RETRY_MAX_SECONDS), 2.0 ** max(0, send_attempts - 1))
    return timedelta(seconds=seconds)


def dispatch_enqueue(job: Job) -> JobDispatch:
    """Write the job's current attempt to the outbox, in the caller's transaction."""
    # The caller may hold a stale instance (the reaper bumps `attempt` with an UPDATE).
    attempt = Job.objects.filter(pk=job.pk).values_list("attempt", flat=True).get()
    JobDispatch.objects.filter(
        job_id=job.pk, state=DispatchState.PENDING, attempt__lt=attempt
    ).update(state=DispatchState.OBSOLETE)
    dispatch, _created = JobDispatch.objects.get_or_create(
        job_id=job.pk, attempt=attempt, defaults={"next_attempt_at": timezone.now()}
    )
    return dispatch


def dispatch_send(dispatch_id: int, *, now: datetime | None = None) -> DispatchOutcome:
    """Send one outbox row if it is due and still current. Never raises for broker errors."""
    now = now or timezone.now()
    claimed = JobDispatch.objects.filter(
        pk=dispatch_id, state=DispatchState.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    if claimed != 1:
        return DispatchOutcome.SKIPPED
    dispatch = JobDispatch.objects.select_related("job__project").get(pk=dispatch_id)
    job = dispatch.job
    if job.state != JobState.QUEUED or job.attempt != dispatch.attempt:
        JobDispatch.objects.filter(pk=dispatch_id).update(state=DispatchState.OBSOLETE)
        return DispatchOutcome.OBSOLETE
    reason = capacity_hold_reason(job, now=now)
    if reason:
        # Never sent to run on fewer devices: asked again when a worker brings capacity.
        hold_for_capacity(job, reason)
        JobDispatch.objects.filter(pk=dispatch_id, state=DispatchState.PENDING).update(
            next_attempt_at=now + timedelta(seconds=CAPACITY_RECHECK_SECONDS)
        )
        return DispatchOutcome.HELD
    try:
        send_job(job)
    except Exception as error:  # noqa: BLE001 - any failure leaves the row for a retry
        _record_failure(dispatch, error, now=now)
        return DispatchOutcome.FAILED
    sent_at = timezone.now()
    JobDispatch.objects.filter(pk=dispatch_id).update(
        state=DispatchState.SENT, sent_at=sent_at, send_attempts=F("send_attempts") + 1
    )
    # The queue timeout of the reaper counts from the real send, not from the request.
    Job.objects.filter(pk=job.pk, attempt=dispatch.attempt, state=JobState.QUEUED).update(
        dispatched_at=sent_at
    )
    if job.held_for == HELD_FOR_CAPACITY:
        Job.objects.filter(pk=job.pk, held_for=HELD_FOR_CAPACITY).update(
            held_for="", held_reason=""
        )
    return DispatchOutcome.SENT


def _record_failure(dispatch: JobDispatch, error: Exception, *, now: datetime) -> None:
    attempts = dispatch.send_attempts + 1
    delay = retry_delay(attempts)
    JobDispatch.objects.filter(pk=dispatch.pk, state=DispatchState.PENDING).update(
        send_attempts=attempts,
        next_attempt_at=now + delay,
        last_error=f"{type(error).__name__}: {error}"[:2000],
    )
    log.warning(
        "dispatch of job %s attempt %s failed (try %d, next in %.0fs): %s",
        dispatch.job_id,
        dispatch.attempt,
        attempts,
        delay.total_seconds(),
        error,
    )


def dispatch_send_after_commit(dispatch_id: int) -> None:
    """The web process's immediate try; the control task covers whatever this misses.

    Whatever happens here, the caller (an API request whose job is committed) is not
    told: dispatch is the control plane's problem, not the client's.
    """
    if broker_recently_failed():
        # Skip the connect timeout on every request of an outage: the outbox sends it.
        return
    try:
        dispatch_send(dispatch_id)
    except Exception:  # noqa: BLE001 - e.g. the database went away right after commit
        log.exception("immediate dispatch of outbox row %s failed; the outbox retries", dispatch_id)


def dispatch_outbox_send_due(*, now: datetime | None = None) -> dict[str, int]:
    """One pass of the control task: send every due row, oldest first.

    After a failed send the pass stops: with the broker down every other row would pay
    the same failed connect; they stay due and the next pass (seconds later) tries again.
    """
    now = now or timezone.now()
    due = list(
        JobDispatch.objects.filter(state=DispatchState.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:PASS_LIMIT]
    )
    counts = {outcome.value: 0 for outcome in DispatchOutcome}
    for dispatch_id in due:
        outcome = dispatch_send(dispatch_id, now=now)
        counts[outcome.value] += 1
        if outcome is DispatchOutcome.FAILED:
            break
    return counts
