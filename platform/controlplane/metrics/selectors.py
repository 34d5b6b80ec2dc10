"""The database figures behind /metrics, each one bounded query (see docs/operations.md).

Every read goes through an index, or a window whose size is fixed, so a scrape costs the
same with a thousand jobs or ten million:
- live jobs (queued, running): the `state` index, over the live rows only;
- jobs finished in the last hour: the `finished_at` index;
- event-application lag: the newest EVENT_LAG_SAMPLE events by primary key (the event
  table is the largest one; an index on `applied_at` would tax every event written);
- serve nodes: a table of a few rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Min, Q, Sum
from django.utils import timezone

from controlplane.jobs.models import TERMINAL_STATES, Job, JobEventRecord, JobState
from controlplane.serving.models import ServeNode

LIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
JOB_DURATION_WINDOW = timedelta(hours=1)
EVENT_LAG_WINDOW = timedelta(minutes=5)
EVENT_LAG_SAMPLE = 5_000
# Serve nodes gone for longer than this drop out (a node renamed or retired for good).
SERVE_NODE_HORIZON = timedelta(days=1)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (upper bounds in seconds, +Inf last), count and sum."""

    buckets: list[tuple[float, int]]
    count: int
    total_seconds: float


def live_job_counts() -> list[dict]:
    """[{state, kind, queue, held_for, count}] of queued and running jobs."""
    return list(
        Job.objects.filter(state__in=LIVE_STATES)
        .values("state", "kind", "queue", "held_for")
        .annotate(count=Count("id"))
        .order_by()
    )


def oldest_queued_by_queue() -> dict[str, datetime]:
    """When the oldest job still waiting on each queue was submitted."""
    rows = (
        Job.objects.filter(state=JobState.QUEUED)
        .values("queue")
        .annotate(oldest=Min("created_at"))
        .order_by()
    )
    return {row["queue"]: row["oldest"] for row in rows}


def job_durations(
    bounds: tuple[float, ...], *, now: datetime | None = None
) -> dict[tuple[str, str], Histogram]:
    """Run time (started -> finished) of the jobs that ended in the last hour, per
    (kind, final state). Jobs cancelled before they started have no run time: left out."""
    now = now or timezone.now()
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    rows = (
        Job.objects.filter(
            finished_at__gte=now - JOB_DURATION_WINDOW,
            state__in=TERMINAL_STATES,
            started_at__isnull=False,
        )
        .annotate(duration=duration)
        .values("kind", "state")
        .annotate(**_bucket_aggregates("duration", bounds))
        .order_by()
    )
    return {(row["kind"], row["state"]): _histogram(row, bounds) for row in rows}


def event_lag(bounds: tuple[float, ...], *, now: datetime | None = None) -> Histogram:
    """applied_at - emitted_at of the events applied in the last minutes, over at most the
    newest EVENT_LAG_SAMPLE events: ids grow with applied_at, so the window is an id range."""
    now = now or timezone.now()
    floor = (
        JobEventRecord.objects.order_by("-id")
        .values_list("id", flat=True)[EVENT_LAG_SAMPLE - 1 : EVENT_LAG_SAMPLE]
        .first()
    )
    events = JobEventRecord.objects.filter(applied_at__gte=now - EVENT_LAG_WINDOW)
    if floor is not None:
        events = events.filter(id__gte=floor)
    lag = ExpressionWrapper(F("applied_at") - F("emitted_at"), output_field=DurationField())
    row = events.annotate(lag=lag).aggregate(**_bucket_aggregates("lag", bounds))
    return _histogram(row, bounds)


def worker_heartbeats() -> dict[str, datetime]:
    """The newest heartbeat per worker running a job (a worker reports one per job)."""
    rows = (
        Job.objects.filter(state=JobState.RUNNING, last_heartbeat_at__isnull=False)
        .exclude(worker="")
        .values("worker")
        .annotate(last=Max("last_heartbeat_at"))
        .order_by()
    )
    return {row["worker"]: row["last"] for row in rows}


def serve_nodes_seen(*, now: datetime | None = None) -> list[tuple[str, str, datetime]]:
    """(name, device, last_seen) of the serve nodes heard from within the last day: one
    that stops reporting keeps its series, growing, until an alert notices."""
    now = now or timezone.now()
    return list(
        ServeNode.objects.filter(last_seen__gte=now - SERVE_NODE_HORIZON).values_list(
            "name", "device", "last_seen"
        )
    )


def _bucket_aggregates(field: str, bounds: tuple[float, ...]) -> dict:
    aggregates = {
        f"le_{i}": Count("id", filter=Q(**{f"{field}__lte": timedelta(seconds=bound)}))
        for i, bound in enumerate(bounds)
    }
    aggregates["n"] = Count("id")
    aggregates["total"] = Sum(field)
    return aggregates


def _histogram(row: dict, bounds: tuple[float, ...]) -> Histogram:
    count = row["n"] or 0
    buckets = [(bound, row[f"le_{i}"] or 0) for i, bound in enumerate(bounds)]
    buckets.append((float("inf"), count))
    total = row["total"]
    return Histogram(buckets, count, total.total_seconds() if total else 0.0)
