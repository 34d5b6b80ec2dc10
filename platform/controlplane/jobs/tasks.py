"""Control-queue tasks: the platform side of the job protocol.

`apply_event` never lets an event go unapplied and unrecorded: it is acknowledged only
after the event is applied, parked as a dead letter, or handed on to its own retry
message. How each outcome is reached:

- applied (or a duplicate / a superseded attempt's: nothing to do) -> ack;
- a database error that may pass (connection lost, deadlock, serialization failure) ->
  retry with backoff, EVENT_MAX_RETRIES times, then parked;
- a `finished` whose earlier events are still missing -> retried every few seconds for
  EVENT_FINISH_WAIT_SECONDS (after a few, its outputs are taken from the completion
  record when the worker wrote one), then parked;
- anything else (a poison event) -> parked at once with its error;
- the process dies mid-apply (kill -9, OOM) -> `reject_on_worker_lost` requeues it.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from controlplane.jobs.services import (
    EventNotReady,
    event_park,
    job_apply_event,
    job_reconcile_outputs,
    jobs_reap_expired,
    stream_note_waiting_finish,
)
from controlplane.jobs.services.outbox import dispatch_outbox_send_due
from workers.protocol import APPLY_EVENT_TASK, CONTROL_QUEUE, JobEvent, ProtocolError

log = logging.getLogger(__name__)

# Connection refused/reset, a restart, deadlock_detected and serialization_failure all
# arrive as OperationalError (psycopg maps SQLSTATE 40P01/40001 there); a connection
# that broke earlier answers InterfaceError.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, SoftTimeLimitExceeded)

# A `finished` blocked by a gap looks for the completion record from this retry on
# (~3 s in): before that the gap is usually an event still in flight in another process.
RECONCILE_AFTER_RETRIES = 3


def backoff_seconds(retries: int, *, cap: float = 10.0) -> float:
    """0.5, 1, 2, 4, 8, 10, 10 ... seconds: quick for a blip, patient for an outage."""
    return min(cap, 0.5 * 2**retries)


def finish_wait_retries() -> int:
    """How many 5-second-capped retries make EVENT_FINISH_WAIT_SECONDS."""
    waited, retries = 0.0, 0
    while waited < settings.EVENT_FINISH_WAIT_SECONDS:
        waited += backoff_seconds(retries, cap=5.0)
        retries += 1
    return retries


def _drop_broken_connections() -> None:
    # Connections are reused across tasks (CELERY_DB_REUSE_MAX); one that broke must not
    # fail the next event too. (Inside a transaction, as in tests, the caller owns it.)
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        try:
            connection.close_if_unusable_or_obsolete()
        except DatabaseError:
            connection.connection = None


# acks_late + reject_on_worker_lost (the option Celery reads; `task_reject_on_worker_lost`
# as a decorator keyword is silently ignored): a process that dies mid-apply gives its
# event back to the queue. acks_on_timeout=False: a hard time limit requeues too.
@shared_task(
    bind=True,
    name=APPLY_EVENT_TASK,
    queue=CONTROL_QUEUE,
    acks_late=True,
    reject_on_worker_lost=True,
    acks_on_timeout=False,
    ignore_result=True,
    max_retries=None,  # the budgets below decide; a retry that gives up parks the event
    soft_time_limit=20,
    time_limit=25,
)
def apply_event(self, event: dict) -> bool:
    try:
        parsed = JobEvent.from_dict(event)
    except (ProtocolError, TypeError, ValueError) as error:
        return _park(self, event, f"malformed event: {error}")
    try:
        return job_apply_event(parsed)
    except EventNotReady as waiting:
        return _wait_for_earlier_events(self, event, parsed, waiting)
    except TRANSIENT_ERRORS as error:
        return _retry_transient(self, event, error)
    except Exception as error:  # noqa: BLE001 - a poison event: parked, never dropped
        log.exception("event %s of job %s cannot be applied", parsed.seq, parsed.job_id)
        return _park(self, event, f"{type(error).__name__}: {error}")


def _retry_transient(task, event: dict, error: Exception) -> bool:
    _drop_broken_connections()
    retries = task.request.retries
    if retries < settings.EVENT_MAX_RETRIES:
        log.warning("event will be retried (%s): %s", retries + 1, error)
        raise task.retry(countdown=backoff_seconds(retries), exc=error)
    return _park(task, event, f"gave up after {retries} retries: {type(error).__name__}: {error}")


def _wait_for_earlier_events(task, event: dict, parsed: JobEvent, waiting: EventNotReady) -> bool:
    retries = task.request.retries
    try:
        if retries == 0:
            stream_note_waiting_finish(job_id=parsed.job_id, attempt=parsed.attempt, seq=parsed.seq)
        if retries >= RECONCILE_AFTER_RETRIES and job_reconcile_outputs(
            job_id=parsed.job_id, attempt=parsed.attempt
        ):
            return job_apply_event(parsed)
    except TRANSIENT_ERRORS as error:
        return _retry_transient(task, event, error)
    except Exception as error:  # noqa: BLE001 - e.g. the store is down: wait like a gap
        log.warning("completion record of job %s not applied yet: %s", parsed.job_id, error)
    if retries < finish_wait_retries():
        raise task.retry(countdown=backoff_seconds(retries, cap=5.0))
    # Parked, not applied: the outputs may be incomplete. The reaper re-runs the attempt
    # when its lease runs out, unless a completion record appears by then.
    return _park(task, event, f"gave up waiting: {waiting}")


def _park(task, event: dict, error: str) -> bool:
    try:
        event_park(event=event, error=error)
    except TRANSIENT_ERRORS as db_error:
        # Not even the dead-letter table is reachable: keep the message alive and try
        # again later (no budget: the event must not be lost to a long outage).
        _drop_broken_connections()
        log.warning("event could not be parked yet (%s); retried", db_error)
        raise task.retry(countdown=backoff_seconds(task.request.retries), exc=db_error) from None
    return False


@shared_task(
    name="control.reap_expired_jobs", queue=CONTROL_QUEUE, ignore_result=True, time_limit=120
)
def reap_expired_jobs() -> list[int]:
    return jobs_reap_expired()


# Beat runs this every DISPATCH_OUTBOX_INTERVAL_SECONDS; overlapping runs (two control
# workers, a slow pass) are safe because every row is taken by a conditional claim.
@shared_task(
    name="control.send_dispatch_outbox", queue=CONTROL_QUEUE, ignore_result=True, time_limit=120
)
def send_dispatch_outbox() -> dict[str, int]:
    return dispatch_outbox_send_due()
