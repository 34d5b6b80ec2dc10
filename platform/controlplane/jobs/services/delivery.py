"""Keeping the event path lossless: dead letters, gap healing, completion records.

- An event that cannot be applied (a non-transient error, or transient ones past the
  retry budget) is parked in DeadLetterEvent, never dropped.
- A gap in an attempt's sequence that outlives out-of-order delivery (a few seconds) is
  healed by asking the worker to re-send the missing events: a request object under
  `resend_request_prefix` (the worker reads the store, never the database).
- A worker writes its attempt's completion record before emitting `finished`; when the
  `finished` event (or an artifact before it) is missing, the record supplies them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from controlplane.jobs.models import DeadLetterEvent, Job, JobEventStream, JobState
from controlplane.jobs.services.events import (
    job_apply_event,
    job_apply_events,
    lock_job,
    stream_of,
)
from controlplane.storage import object_store
from workers.protocol import (
    EventType,
    JobEvent,
    ProtocolError,
    completion_record_key,
    resend_request_prefix,
)
from workers.storage import StorageError
from workers.storage.errors import ObjectNotFoundError

log = logging.getLogger(__name__)

# A worker that never answers (an old worker, or one that died) is not asked forever.
MAX_RESEND_REQUESTS = 10


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@transaction.atomic
def event_park(*, event: Any, error: str) -> DeadLetterEvent:
    """Park an event that could not be applied; a second parking of it counts a delivery."""
    fields = event if isinstance(event, dict) else {}
    job_id = _int_or_none(fields.get("job_id"))
    attempt, seq = _int_or_none(fields.get("attempt")), _int_or_none(fields.get("seq"))
    job = Job.objects.filter(pk=job_id).first() if job_id is not None else None
    stored = event if isinstance(event, dict) else {"raw": repr(event)[:10000]}
    error = error[:10000]
    letter = None
    if job is not None and attempt is not None and seq is not None:
        letter = (
            DeadLetterEvent.objects.select_for_update()
            .filter(job=job, attempt=attempt, seq=seq)
            .first()
        )
    if letter is None:
        letter = DeadLetterEvent.objects.create(
            job=job, attempt=attempt, seq=seq, event=stored, error=error
        )
    else:
        DeadLetterEvent.objects.filter(pk=letter.pk).update(
            event=stored,
            error=error,
            attempts=F("attempts") + 1,
            last_seen_at=timezone.now(),
            resolved_at=None,
        )
    log.error("event parked as dead letter %s (job %s #%s): %s", letter.pk, job_id, seq, error)
    return letter


def dead_letter_reapply(*, letter: DeadLetterEvent, actor) -> bool:
    """Apply a parked event again (after its cause was fixed); True when it is settled."""
    from controlplane.audit.services import audit_append

    event = JobEvent.from_dict(letter.event)
    applied = job_apply_event(event)
    with transaction.atomic():
        DeadLetterEvent.objects.filter(pk=letter.pk).update(resolved_at=timezone.now())
        if letter.job is not None:
            audit_append(
                project=letter.job.project,
                actor=actor,
                action="job.event_reapplied",
                artifact=letter.job,
                payload={"attempt": event.attempt, "seq": event.seq, "applied": applied},
            )
    return True


def events_request_resends(*, now: datetime | None = None) -> list[tuple[int, int]]:
    """Ask workers to re-send the events of gaps older than EVENT_GAP_GRACE_SECONDS.

    Only the current attempt of an unfinished job is asked (older attempts are dropped
    anyway), at most once per grace period and MAX_RESEND_REQUESTS times in all.
    """
    now = now or timezone.now()
    grace = now - timedelta(seconds=settings.EVENT_GAP_GRACE_SECONDS)
    streams = (
        JobEventStream.objects.filter(
            gap_since__lt=grace,
            attempt=F("job__attempt"),
            job__state__in=[JobState.QUEUED, JobState.RUNNING],
            resend_requests__lt=MAX_RESEND_REQUESTS,
        )
        .filter(Q(resend_requested_at__isnull=True) | Q(resend_requested_at__lt=grace))
        .order_by("gap_since")[:500]
    )
    requested = []
    for stream in streams:
        missing = stream.missing_seqs()
        if not missing:
            continue
        key = (
            f"{resend_request_prefix(stream.job_id, stream.attempt)}"
            f"{now:%Y%m%dT%H%M%S%f}-{stream.resend_requests + 1}.json"
        )
        try:
            object_store().put_bytes(
                key, json.dumps({"seqs": missing}).encode(), content_type="application/json"
            )
        except StorageError as error:
            log.warning("resend request for job %s not written: %s", stream.job_id, error)
            continue
        # Only these two columns: event application may be advancing the same row.
        JobEventStream.objects.filter(pk=stream.pk).update(
            resend_requested_at=now, resend_requests=F("resend_requests") + 1
        )
        log.info(
            "job %s attempt %s: asked the worker to re-send events %s",
            stream.job_id,
            stream.attempt,
            missing[:20],
        )
        requested.append((stream.job_id, stream.attempt))
    return requested


class CompletionRecordUnreadable(Exception):
    """The store did not answer: whether the attempt completed is unknown for now."""


def read_completion_record(job_id: int, attempt: int) -> tuple[list[JobEvent], JobEvent] | None:
    """The attempt's recorded (output events, finished event), or None if it wrote none.

    A malformed record counts as none (logged): re-running is safer than trusting it.
    Raises CompletionRecordUnreadable when the store fails.
    """
    key = completion_record_key(job_id, attempt)
    try:
        raw = object_store().get_bytes(key)
    except ObjectNotFoundError:
        return None
    except StorageError as error:
        raise CompletionRecordUnreadable(str(error)) from error
    try:
        data = json.loads(raw)
        finished = JobEvent.from_dict(data["finished"])
        outputs = [JobEvent.from_dict(item) for item in data.get("events", [])]
    except (ValueError, KeyError, TypeError, ProtocolError) as error:
        log.error("completion record %s is malformed (%s); ignored", key, error)
        return None
    belongs = [e for e in [*outputs, finished] if (e.job_id, e.attempt) == (job_id, attempt)]
    if len(belongs) != len(outputs) + 1 or finished.type != EventType.FINISHED:
        log.error("completion record %s names another attempt or no finish; ignored", key)
        return None
    outputs = [e for e in outputs if e.type in (EventType.ARTIFACT, EventType.CHECKPOINT)]
    return outputs, finished


def job_reconcile_outputs(*, job_id: int, attempt: int, finish: bool = False) -> bool:
    """Apply the attempt's completion record: its artifact and checkpoint events, then
    (with `finish`) its finished event, all through the normal idempotent path.

    True when a record was found and applied. Lock order as everywhere: the job row
    first, then what a data pipeline's finish derives, then the audit chain: outputs and
    finish are one batch, whose audit events are appended at its end.
    """
    record = read_completion_record(job_id, attempt)
    if record is None:
        return False
    outputs, finished = record
    with transaction.atomic():
        job = lock_job(job_id)
        if job is None or job.attempt != attempt or job.is_terminal:
            return False
        stream = stream_of(job, attempt)
        # Set first: the finish below is then ready whatever else (metrics) is missing.
        JobEventStream.objects.filter(pk=stream.pk).update(outputs_reconciled_at=timezone.now())
        job_apply_events([*outputs, finished] if finish else outputs)
    log.info(
        "job %s attempt %s: %d output event(s)%s applied from its completion record",
        job_id,
        attempt,
        len(outputs),
        " and its finish" if finish else "",
    )
    return True
