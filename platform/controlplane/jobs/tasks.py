"""Control-queue tasks: the platform side of the job protocol.

`apply_event` (one event per message: older workers) and `apply_events` (a batch of one
attempt's events: what workers send now) never let an event go unapplied and unrecorded:
a message is acknowledged only after each of its events is applied, parked as a dead
letter, or handed on to a retry message. How each outcome is reached:

- applied (or a duplicate / a superseded attempt's: nothing to do) -> ack;
- a database error that may pass (connection lost, deadlock, serialization failure) ->
  the whole message is retried with backoff (applying is idempotent),
  EVENT_MAX_RETRIES times, then its events are parked;
- a `finished` whose earlier events are still missing -> retried on its own every few
  seconds for EVENT_FINISH_WAIT_SECONDS (after a few, its outputs are taken from the
  completion record when the worker wrote one), then parked; the rest of its batch is
  applied meanwhile;
- anything else (a poison event) -> parked at once with its error; in a batch the
  others are applied (the batch is applied again event by event, in savepoints);
- the process dies mid-apply (kill -9, OOM) -> `reject_on_worker_lost` requeues it.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction

from controlplane.jobs.capacity import held_dispatches_due_now, worker_heartbeat_apply
from controlplane.jobs.services import (
    BatchOutcome,
    EventNotReady,
    event_park,
    job_apply_event,
    job_apply_events,
    job_reconcile_outputs,
    jobs_reap_expired,
    stream_note_waiting_finish,
)
from controlplane.jobs.services.outbox import dispatch_outbox_send_due, dispatch_send
from workers.protocol import (
    APPLY_EVENT_TASK,
    APPLY_EVENTS_TASK,
    CONTROL_QUEUE,
    GANG_BEAT_TASK,
    GANG_JOIN_TASK,
    GANG_LEAVE_TASK,
    WORKER_HEARTBEAT_TASK,
    JobEvent,
    ProtocolError,
    WorkerHeartbeat,
    event_batch,
    event_batch_items,
)

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
# message back to the queue. acks_on_timeout=False: a hard time limit requeues too.
APPLY_TASK_OPTIONS = {
    "bind": True,
    "queue": CONTROL_QUEUE,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "acks_on_timeout": False,
    "ignore_result": True,
    "max_retries": None,  # the budgets below decide; a retry that gives up parks the events
    "soft_time_limit": 20,
    "time_limit": 25,
}


@shared_task(name=APPLY_EVENT_TASK, **APPLY_TASK_OPTIONS)
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
        return _retry_transient(self, [event], error)
    except Exception as error:  # noqa: BLE001 - a poison event: parked, never dropped
        log.exception("event %s of job %s cannot be applied", parsed.seq, parsed.job_id)
        return _park(self, event, f"{type(error).__name__}: {error}")


@shared_task(name=APPLY_EVENTS_TASK, **APPLY_TASK_OPTIONS)
def apply_events(self, batch: dict) -> int:
    """Apply a worker's batch ({"events": [...]}, one attempt's, in seq order); returns
    how many events were applied now. One transaction per job attempt in the batch."""
    try:
        items = event_batch_items(batch)
    except ProtocolError as error:
        _park(self, batch, f"malformed event batch: {error}")
        return 0
    parsed, bad = _parse_all(items)
    try:
        outcomes = [_apply_group(group) for group in _by_attempt(parsed)]
    except TRANSIENT_ERRORS as error:
        return _retry_transient(self, items, error)
    poisoned = bad + [
        (event.to_dict(), error) for outcome in outcomes for event, error in outcome.poisoned
    ]
    if poisoned:
        _park_all(self, poisoned)
    applied = sum(len(outcome.applied) for outcome in outcomes)
    waiting = [
        (not_ready.event.to_dict(), not_ready)
        for outcome in outcomes
        for not_ready in outcome.waiting
    ]
    if waiting:  # noted on their streams already (in the batch's transaction)
        applied += _wait_for_finishes(self, waiting, batched=True)
    return applied


def _parse_all(items: list) -> tuple[list[JobEvent], list[tuple[dict, str]]]:
    parsed, bad = [], []
    for item in items:
        try:
            parsed.append(JobEvent.from_dict(item))
        except (ProtocolError, TypeError, ValueError) as error:
            bad.append((item, f"malformed event: {error}"))
    return parsed, bad


def _by_attempt(events: list[JobEvent]) -> list[list[JobEvent]]:
    """A worker's batch is one attempt's; anything else is split, never refused."""
    groups: dict[tuple[int, int], list[JobEvent]] = {}
    for event in events:
        groups.setdefault((event.job_id, event.attempt), []).append(event)
    return list(groups.values())


def _apply_group(events: list[JobEvent]) -> BatchOutcome:
    try:
        return job_apply_events(events)
    except TRANSIENT_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - some event is poison: find it, apply the others
        log.warning(
            "a batch of job %s failed; applying its %d events one by one",
            events[0].job_id,
            len(events),
            exc_info=True,
        )
    try:
        return job_apply_events(events, isolate=True, transient=TRANSIENT_ERRORS)
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:  # noqa: BLE001 - not one event's fault (e.g. the audit append)
        log.exception("the events of job %s cannot be applied", events[0].job_id)
        reason = f"{type(error).__name__}: {error}"
        return BatchOutcome(poisoned=[(event, reason) for event in events])


def _retry_transient(task, events: list, error: Exception) -> bool:
    """Retry the whole message later (applying is idempotent); past the budget, park it."""
    _drop_broken_connections()
    retries = task.request.retries
    if retries < settings.EVENT_MAX_RETRIES:
        log.warning("event(s) will be retried (%s): %s", retries + 1, error)
        raise task.retry(countdown=backoff_seconds(retries), exc=error)
    reason = f"gave up after {retries} retries: {type(error).__name__}: {error}"
    _park_all(task, [(event, reason) for event in events])
    return False


def _wait_for_earlier_events(task, event: dict, parsed: JobEvent, waiting: EventNotReady) -> bool:
    if task.request.retries == 0:
        try:
            stream_note_waiting_finish(job_id=parsed.job_id, attempt=parsed.attempt, seq=parsed.seq)
        except TRANSIENT_ERRORS as error:
            return _retry_transient(task, [event], error)
    return _wait_for_finishes(task, [(event, waiting)], batched=False) > 0


def _wait_for_finishes(task, waiting: list[tuple[dict, EventNotReady]], *, batched: bool) -> int:
    """Held-back finishes: from the RECONCILE_AFTER_RETRIES-th try on, apply the attempt's
    completion record and then the finish; else try them again (on their own, out of a
    batch) a little later; parked when EVENT_FINISH_WAIT_SECONDS are over. Returns how
    many were applied now."""
    retries = task.request.retries
    applied, still = 0, []
    for event, not_ready in waiting:
        parsed = not_ready.event
        try:
            if retries >= RECONCILE_AFTER_RETRIES and job_reconcile_outputs(
                job_id=parsed.job_id, attempt=parsed.attempt
            ):
                applied += int(job_apply_event(parsed))
                continue
        except TRANSIENT_ERRORS as error:
            return _retry_transient(task, [item for item, _ in waiting], error)
        except Exception as error:  # noqa: BLE001 - e.g. the store is down: wait like a gap
            log.warning("completion record of job %s not applied yet: %s", parsed.job_id, error)
        still.append((event, not_ready))
    if not still:
        return applied
    if retries < finish_wait_retries():
        countdown = backoff_seconds(retries, cap=5.0)
        if batched:
            held = event_batch([not_ready.event for _, not_ready in still])
            raise task.retry(args=[held], countdown=countdown)
        raise task.retry(countdown=countdown)
    # Parked, not applied: the outputs may be incomplete. The reaper re-runs the attempt
    # when its lease runs out, unless a completion record appears by then.
    _park_all(task, [(event, f"gave up waiting: {not_ready}") for event, not_ready in still])
    return applied


def _park(task, event, error: str) -> bool:
    _park_all(task, [(event, error)])
    return False


def _park_all(task, letters: list[tuple[object, str]]) -> None:
    try:
        with transaction.atomic():
            for event, error in letters:
                event_park(event=event, error=error)
    except TRANSIENT_ERRORS as db_error:
        # Not even the dead-letter table is reachable: keep the message alive and try
        # again later (no budget: the events must not be lost to a long outage).
        _drop_broken_connections()
        log.warning("event(s) could not be parked yet (%s); retried", db_error)
        raise task.retry(countdown=backoff_seconds(task.request.retries), exc=db_error) from None


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


# Multi-node attempts (controlplane/jobs/gang.py): what each node of a gang tells us.
# A lost message is covered by the gang's timeout and the nodes' beats.
@shared_task(name=GANG_JOIN_TASK, queue=CONTROL_QUEUE, ignore_result=True)
def gang_join_task(message: dict) -> bool:
    from controlplane.jobs.gang import gang_join

    return gang_join(
        job_id=int(message["job_id"]),
        attempt=int(message["attempt"]),
        member=int(message["member"]),
        endpoint=str(message["endpoint"]),
    )


@shared_task(name=GANG_BEAT_TASK, queue=CONTROL_QUEUE, ignore_result=True)
def gang_beat_task(message: dict) -> None:
    from controlplane.jobs.gang import gang_beat

    gang_beat(
        job_id=int(message["job_id"]),
        attempt=int(message["attempt"]),
        member=int(message["member"]),
    )


@shared_task(name=GANG_LEAVE_TASK, queue=CONTROL_QUEUE, ignore_result=True)
def gang_leave_task(message: dict) -> None:
    from controlplane.jobs.gang import gang_leave

    gang_leave(
        job_id=int(message["job_id"]),
        attempt=int(message["attempt"]),
        member=int(message["member"]),
        error=str(message.get("error") or ""),
        retryable=bool(message.get("retryable")),
    )


# A worker's own heartbeat (workers/registry.py): the registry of live workers and their
# devices. One that brings capacity sends the jobs that were waiting for it at once.
@shared_task(name=WORKER_HEARTBEAT_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=60)
def worker_heartbeat(beat: dict) -> int:
    """Returns how many held jobs were sent because of it."""
    try:
        parsed = WorkerHeartbeat.from_dict(beat)
    except (ProtocolError, TypeError, ValueError) as error:
        log.warning("malformed worker heartbeat dropped: %s", error)
        return 0
    if not worker_heartbeat_apply(parsed):
        return 0
    sent = 0
    for dispatch_id in held_dispatches_due_now(list(parsed.queues)):
        sent += dispatch_send(dispatch_id) == "sent"
    return sent
