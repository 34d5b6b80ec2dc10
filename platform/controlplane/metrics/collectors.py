"""Prometheus collectors read at scrape time: every figure comes from the database or the
broker when Prometheus asks, so each gunicorn process answers the same, and nothing is
kept in memory between scrapes.

Windowed distributions (job run times over the last hour, event lag over the last
minutes) are *gauge histograms*: buckets that may go down as well as up, read directly
(`histogram_quantile(0.95, controlplane_job_duration_seconds_bucket)`), no `rate()`.
A histogram rather than a summary: its buckets are counted in SQL (one pass, no rows
brought back, the same on PostgreSQL and SQLite), can be summed across kinds, and any
quantile follows from them; a summary's quantiles would need every duration fetched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

from django.utils import timezone
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from controlplane.jobs.models import JobState
from controlplane.metrics import selectors
from controlplane.metrics.broker import monitored_queues, read_queue_depths
from controlplane.metrics.middleware import HTTP_REQUEST_DURATION
from workers.protocol import JobKind, Queue

logger = logging.getLogger(__name__)

PREFIX = "controlplane"
JOB_DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
# Workers batch events for 100 ms; seconds mean a backlog on the control queue.
EVENT_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ScrapeCollector(Collector):
    """Reads every source at scrape time. A source that fails (the database away) reports
    `controlplane_metrics_source_up{source} 0` instead of failing the whole scrape."""

    def collect(self) -> Iterator[Metric]:
        source_up = GaugeMetricFamily(
            f"{PREFIX}_metrics_source_up",
            "Whether this scrape could read the source (1) or not (0)",
            labels=["source"],
        )
        took = GaugeMetricFamily(
            f"{PREFIX}_metrics_source_seconds",
            "Time this scrape spent reading the source",
            labels=["source"],
        )
        for source, read in SOURCES:
            start = time.perf_counter()
            try:
                families = list(read())
                up = 1
            except Exception as error:  # noqa: BLE001 - a source down, never a 500
                logger.warning("metrics: the %s source failed: %s", source, error)
                families, up = [], 0
            yield from families
            source_up.add_metric([source], up)
            took.add_metric([source], time.perf_counter() - start)
        yield source_up
        yield took


def broker_families() -> Iterator[Metric]:
    reading = read_queue_depths(monitored_queues())
    up = GaugeMetricFamily(
        f"{PREFIX}_broker_up",
        "Whether the broker answered this scrape (1) or not (0)",
        labels=["transport"],
    )
    up.add_metric([reading.transport], 1 if reading.up else 0)
    yield up
    if not reading.up:
        return  # no depths rather than zeros: an autoscaler must not scale to nothing
    depth = GaugeMetricFamily(
        f"{PREFIX}_queue_messages",
        "Messages waiting in the broker queue (not yet taken by a worker)",
        labels=["queue"],
    )
    for queue, count in sorted(reading.depths.items()):
        depth.add_metric([queue], count)
    yield depth


def database_families() -> Iterator[Metric]:
    now = timezone.now()
    yield from _live_jobs()
    yield _oldest_queued(now)
    yield _job_durations(now)
    yield _event_lag(now)
    yield _ages(
        "worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat for a job it is running",
        ["worker"],
        [([worker], last) for worker, last in selectors.worker_heartbeats().items()],
        now,
    )
    yield _ages(
        "serve_node_last_seen_age_seconds",
        "Seconds since the serve node last reported (nodes heard from in the last day)",
        ["node", "device"],
        [([name, device], seen) for name, device, seen in selectors.serve_nodes_seen(now=now)],
        now,
    )


def _live_jobs() -> Iterator[Metric]:
    # Every (state, kind, queue) is present, at 0 when empty: a series that vanishes
    # when the last job leaves makes alerts and graphs go blank instead of reading 0.
    counts = {
        (state, kind.value, queue.value): 0
        for state in selectors.LIVE_STATES
        for kind in JobKind
        for queue in Queue
    }
    held: dict[tuple[str, str], int] = {}
    for row in selectors.live_job_counts():
        key = (row["state"], row["kind"], row["queue"])
        counts[key] = counts.get(key, 0) + row["count"]
        if row["held_for"] and row["state"] == JobState.QUEUED:
            reason_key = (row["held_for"], row["queue"])
            held[reason_key] = held.get(reason_key, 0) + row["count"]
    jobs = GaugeMetricFamily(
        f"{PREFIX}_jobs",
        "Jobs queued or running now, by kind and queue (finished ones: job_duration_seconds)",
        labels=["state", "kind", "queue"],
    )
    for (state, kind, queue), count in sorted(counts.items()):
        jobs.add_metric([state, kind, queue], count)
    yield jobs
    held_family = GaugeMetricFamily(
        f"{PREFIX}_jobs_held",
        "Queued jobs not dispatched on purpose, by reason (quota: the project's GPU quota is "
        "full; capacity: no live worker has the devices the job needs)",
        labels=["reason", "queue"],
    )
    for queue in Queue:
        held.setdefault(("quota", queue.value), 0)
        held.setdefault(("capacity", queue.value), 0)
    for (reason, queue), count in sorted(held.items()):
        held_family.add_metric([reason, queue], count)
    yield held_family


def _oldest_queued(now) -> Metric:
    family = GaugeMetricFamily(
        f"{PREFIX}_job_queued_oldest_age_seconds",
        "Seconds the oldest job still queued on this queue has waited (0: none waiting)",
        labels=["queue"],
    )
    oldest = selectors.oldest_queued_by_queue()
    for queue in sorted({*(q.value for q in Queue), *oldest}):
        since = oldest.get(queue)
        family.add_metric([queue], (now - since).total_seconds() if since else 0.0)
    return family


def _job_durations(now) -> Metric:
    family = GaugeHistogramMetricFamily(
        f"{PREFIX}_job_duration_seconds",
        "Run time of the jobs that finished in the last hour, by kind and final state",
        labels=["kind", "state"],
    )
    histograms = selectors.job_durations(JOB_DURATION_BUCKETS, now=now)
    for (kind, state), histogram in sorted(histograms.items()):
        family.add_metric(
            [kind, state], _bucket_pairs(histogram), gsum_value=histogram.total_seconds
        )
    return family


def _event_lag(now) -> Metric:
    family = GaugeHistogramMetricFamily(
        f"{PREFIX}_event_apply_lag_seconds",
        "applied_at - emitted_at of the job events applied in the last 5 minutes "
        f"(the newest {selectors.EVENT_LAG_SAMPLE} at most)",
        labels=[],
    )
    histogram = selectors.event_lag(EVENT_LAG_BUCKETS, now=now)
    family.add_metric([], _bucket_pairs(histogram), gsum_value=histogram.total_seconds)
    return family


def _bucket_pairs(histogram: selectors.Histogram) -> list[tuple[str, float]]:
    return [(_bound(bound), count) for bound, count in histogram.buckets]


def _bound(bound: float) -> str:
    return floatToGoString(bound)  # "30.0", "+Inf": as prometheus_client's own histograms


def _ages(name: str, documentation: str, labels: list[str], rows, now) -> Metric:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)
    for values, at in sorted(rows, key=lambda row: row[0]):
        family.add_metric(values, max(0.0, (now - at).total_seconds()))
    return family


SOURCES: tuple[tuple[str, Callable[[], Iterator[Metric]]], ...] = (
    ("database", database_families),
    ("broker", broker_families),
)


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: the database and broker read now, plus the request
    latencies of every web process (multiprocess files) or of this one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(HTTP_REQUEST_DURATION)
    return registry
