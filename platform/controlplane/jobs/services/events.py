"""Applying worker events to the job state of record (see the package docstring).

The hot path: every event of every running job comes through here. The events of one
attempt that arrive together (a worker sends up to EVENT_BATCH_MAX_EVENTS per message)
are applied in one transaction whose cost hardly depends on their number: lock the job
row, read the attempt's stream, one INSERT of the records, one upsert of the metric
points, at most one lease refresh, advance the stream, one commit (one WAL flush).
`job_apply_event` is the batch of one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from controlplane.jobs.models import Job, JobEventRecord, JobEventStream
from controlplane.jobs.services.handlers import DEFERRED_TYPES, HANDLERS, EventWrites
from workers.protocol import EventType, JobEvent

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
        self.event = event
        self.missing = missing


@dataclass
class BatchOutcome:
    """What became of a batch's events (each event lands in exactly one of these)."""

    applied: list[int] = field(default_factory=list)  # seqs applied now, ascending
    skipped: int = 0  # duplicates, a superseded attempt's, an unknown job's
    waiting: list[EventNotReady] = field(default_factory=list)  # finishes held back
    poisoned: list[tuple[JobEvent, str]] = field(default_factory=list)  # (event, error)


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
    lets database errors (and a handler's own error) through: the control task retries
    or parks the event.
    """
    outcome = _apply(event.job_id, event.attempt, [event])
    if outcome.waiting:
        raise outcome.waiting[0]  # rolls back: nothing of a waiting event is written
    return bool(outcome.applied)


# Errors that are never an event's fault: they abort the batch (the caller retries it)
# instead of parking the event that happened to be running.
DATABASE_TRANSIENT = (OperationalError, InterfaceError)


@transaction.atomic
def job_apply_events(
    events: Sequence[JobEvent],
    *,
    isolate: bool = False,
    transient: tuple[type[BaseException], ...] = DATABASE_TRANSIENT,
) -> BatchOutcome:
    """Apply events of one job attempt in one transaction, in seq order; idempotent.

    Duplicates (inside the batch or applied before) and a superseded attempt's events are
    skipped; a `finished` whose earlier events are missing is held back (`waiting`, and
    noted on the stream) while the others are applied. A handler's error aborts the
    whole batch, unless `isolate`: then each event runs in its own savepoint and one
    that fails is reported in `poisoned` (not applied) while the others are; errors of a
    `transient` kind still abort the batch (the caller retries it).
    """
    if not events:
        return BatchOutcome()
    job_id, attempt = events[0].job_id, events[0].attempt
    if any((event.job_id, event.attempt) != (job_id, attempt) for event in events):
        raise ValueError("a batch holds the events of one job attempt")
    return _apply(job_id, attempt, events, isolate=isolate, transient=transient)


def _apply(
    job_id: int,
    attempt: int,
    events: Sequence[JobEvent],
    *,
    isolate: bool = False,
    transient: tuple[type[BaseException], ...] = (),
) -> BatchOutcome:
    """The body of both entry points; the caller holds the transaction."""
    job = lock_job(job_id)
    if job is None:
        log.warning("%d event(s) for unknown job %s dropped", len(events), job_id)
        return BatchOutcome(skipped=len(events))
    if attempt != job.attempt:
        log.info("event(s) of superseded attempt %s of job %s dropped", attempt, job.pk)
        return BatchOutcome(skipped=len(events))
    stream = stream_of(job, attempt)
    fresh = _fresh_events(stream, events)
    outcome = BatchOutcome(skipped=len(events) - len(fresh))
    if not fresh:
        return outcome
    now = timezone.now()
    # Counted before anything of this batch is written: how many events below each
    # `finished` were applied earlier (the ones of this batch are added as they apply).
    applied_before = {
        event.seq: _applied_below(stream, event.seq)
        for event in fresh
        if event.type == EventType.FINISHED
    }

    def ready(event: JobEvent) -> bool:
        if event.type != EventType.FINISHED or stream.outputs_reconciled_at is not None:
            # Once the completion record supplied every artifact and checkpoint, what may
            # still be missing (metrics, logs) is shown as a gap, not worth a re-run.
            return True
        # `fresh` is in seq order: everything applied so far in this batch is below it.
        return applied_before[event.seq] + len(outcome.applied) == event.seq

    held: list[JobEvent] = []  # finishes that wait for earlier events
    if isolate:
        writes = _apply_one_by_one(job, attempt, fresh, now, ready, outcome, held, transient)
    else:
        writes = _apply_in_order(job, attempt, fresh, now, ready, outcome, held)
    outcome.waiting = [EventNotReady(event, _missing_below(stream, event.seq)) for event in held]
    _advance(stream, outcome, now)
    writes.flush_audits()  # the audit chain last (lock order)
    return outcome


def _apply_in_order(job, attempt, fresh, now, ready, outcome, held) -> EventWrites:
    writes = EventWrites(job, now)
    for event in fresh:
        if job.attempt != attempt:
            # A retryable failure just queued the next attempt: the rest is a stale one's.
            outcome.skipped += 1
        elif not ready(event):
            held.append(event)
        else:
            _apply_event(writes, event)
            outcome.applied.append(event.seq)
    writes.flush()
    return writes


def _apply_one_by_one(job, attempt, fresh, now, ready, outcome, held, transient) -> EventWrites:
    """The failure path: each event in a savepoint, so a poison event fails alone."""
    writes = EventWrites(job, now)
    for event in fresh:
        if writes.job.attempt != attempt:
            outcome.skipped += 1
            continue
        if not ready(event):
            held.append(event)
            continue
        audits = writes.pending_audits()
        try:
            with transaction.atomic():
                _apply_event(writes, event)
                writes.flush()
        except transient:
            raise
        except Exception as error:  # noqa: BLE001 - this event's own fault: reported, not applied
            log.exception("event %s of job %s cannot be applied", event.seq, event.job_id)
            outcome.poisoned.append((event, f"{type(error).__name__}: {error}"))
            # The savepoint rolled back what the handler wrote: forget what it queued
            # and reload the row its claims may have changed in memory.
            writes.discard(keep_audits=audits, job=lock_job(job.pk))
            continue
        outcome.applied.append(event.seq)
    return writes


def _apply_event(writes: EventWrites, event: JobEvent) -> None:
    writes.record(event)
    if event.type not in DEFERRED_TYPES:
        writes.flush()  # its handler writes at once: what waits goes first, in event order
    HANDLERS[event.type](writes, event)


def _fresh_events(stream: JobEventStream, events: Sequence[JobEvent]) -> list[JobEvent]:
    """The events not applied yet, each seq once, in seq order.

    From the stream alone in the common cases; one query only below a gap. The job row
    lock is held, so no other transaction inserts a record of this job meanwhile (the
    unique (job, attempt, seq) key stays as the backstop).
    """
    by_seq: dict[int, JobEvent] = {}
    for event in events:
        by_seq.setdefault(event.seq, event)  # a duplicate inside the batch counts once
    seqs = sorted(by_seq)
    old = [seq for seq in seqs if seq <= stream.max_seq]
    if not old:
        applied: set[int] = set()
    elif not stream.has_gap:
        applied = set(old)
    else:
        applied = set(
            JobEventRecord.objects.filter(
                job_id=stream.job_id, attempt=stream.attempt, seq__in=old
            ).values_list("seq", flat=True)
        )
    return [by_seq[seq] for seq in seqs if seq not in applied]


def _applied_below(stream: JobEventStream, seq: int) -> int:
    """How many events below `seq` the attempt has applied (before this batch)."""
    if stream.max_seq < seq:
        return stream.applied_count
    return JobEventRecord.objects.filter(
        job_id=stream.job_id, attempt=stream.attempt, seq__lt=seq
    ).count()


def _missing_below(stream: JobEventStream, seq: int) -> list[int]:
    """The seqs below `seq` with no record (this batch's records are written by now)."""
    applied = set(
        JobEventRecord.objects.filter(
            job_id=stream.job_id, attempt=stream.attempt, seq__lt=seq
        ).values_list("seq", flat=True)
    )
    return [missing for missing in range(seq) if missing not in applied][:1000]


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


def _advance(stream: JobEventStream, outcome: BatchOutcome, now: datetime) -> None:
    """Count the batch's applied events; a held-back `finished` marks how far it reaches."""
    fields = []
    if outcome.applied:
        stream.max_seq = max(stream.max_seq, outcome.applied[-1])
        stream.applied_count += len(outcome.applied)
        fields += ["max_seq", "applied_count"]
    if outcome.waiting:
        # The attempt has at least this many events: those lost just before its finish
        # are a gap too (shown, and asked for again by the reaper).
        stream.waiting_finish_seq = max(waiting.event.seq for waiting in outcome.waiting)
        fields.append("waiting_finish_seq")
    if not fields:
        return
    gap_since = stream.gap_since
    if not stream.has_gap:
        stream.gap_since = None
    elif stream.gap_since is None:
        stream.gap_since = now
    if stream.gap_since != gap_since:
        fields.append("gap_since")
    stream.save(update_fields=fields)
