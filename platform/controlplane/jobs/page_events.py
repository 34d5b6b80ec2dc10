"""A job's events as its page lists them: newest first, a page at a time, filtered by
type, each with a one-line summary (the payload stays one click away), and the events
applied since the page last polled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet

from controlplane.jobs.models import Job, JobEventRecord
from controlplane.jobs.page_values import significant

EVENTS_PER_PAGE = 50


def _metric_values(values: Any) -> str:
    if not isinstance(values, dict):
        return ""
    shown = [
        f"{key} {significant(v) if isinstance(v, float) else v}"
        for key, v in list(values.items())[:4]
    ]
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def event_summary(event: JobEventRecord) -> str:
    """One line a person reads instead of the payload (which stays one click away)."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    kind = event.type
    if kind == "started":
        return f"Started on {payload.get('worker') or 'a worker'}"
    if kind == "progress":
        fraction = payload.get("fraction")
        share = f"{fraction * 100:.0f} %" if isinstance(fraction, int | float) else ""
        return " · ".join(part for part in (share, str(payload.get("message") or "")) if part)
    if kind == "metric":
        return f"step {payload.get('step', '?')}: {_metric_values(payload.get('values'))}"
    if kind == "checkpoint":
        return f"Checkpoint at step {payload.get('step', '?')}"
    if kind == "artifact":
        return f"Published {payload.get('name', 'a file')}"
    if kind == "log":
        message = str(payload.get("message") or "")
        return message if len(message) <= 200 else message[:200] + "…"
    if kind == "finished":
        return "Finished"
    if kind == "failed":
        retry = " (will be retried)" if payload.get("retryable") else ""
        return f"Failed: {str(payload.get('error') or 'no reason given')[:200]}{retry}"
    if kind == "cancelled":
        return f"Cancelled: {payload.get('reason') or 'no reason given'}"
    if kind == "heartbeat":
        return "Alive" + (" · usage reported" if payload.get("usage") else "")
    return kind


def event_size(event: JobEventRecord) -> int | None:
    """The bytes a checkpoint or artifact event stored (shown with the size filter)."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    size = payload.get("size") if event.type in ("checkpoint", "artifact") else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


@dataclass
class EventRow:
    record: JobEventRecord
    summary: str
    size: int | None
    payload_json: str


def event_rows(records: list[JobEventRecord]) -> list[EventRow]:
    return [
        EventRow(
            record=r,
            summary=event_summary(r),
            size=event_size(r),
            payload_json=json.dumps(r.payload, indent=1, ensure_ascii=False, default=str)[:20_000],
        )
        for r in records
    ]


def _events(job: Job, event_type: str) -> QuerySet[JobEventRecord]:
    records = JobEventRecord.objects.filter(job=job)
    # Heartbeats are many and say only "alive": listed when asked for by name.
    records = records.filter(type=event_type) if event_type else records.exclude(type="heartbeat")
    return records.order_by("-id")


def event_types(job: Job) -> list[str]:
    """The types of event the job has, for the filter (one probe of the (job, type) index)."""
    return sorted(
        JobEventRecord.objects.filter(job=job).values_list("type", flat=True).distinct().order_by()
    )


def events_page(job: Job, *, event_type: str = "", page: Any = 1) -> Page:
    """The job's events, newest first, EVENTS_PER_PAGE a page, of one type if given."""
    return Paginator(_events(job, event_type), EVENTS_PER_PAGE).get_page(page)


def events_after(job: Job, after_id: int) -> list[JobEventRecord]:
    """Events applied since the page last looked (ids grow as events are applied), newest
    first: the oldest EVENTS_PER_PAGE of them, so a burst arrives over a few polls and none
    is skipped."""
    oldest_first = _events(job, "").filter(id__gt=after_id).order_by("id")[:EVENTS_PER_PAGE]
    return list(reversed(oldest_first))
