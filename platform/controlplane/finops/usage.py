"""A job attempt's usage, from the figures its worker reports in its events, with its cost.

Heartbeats and the terminal event carry a `UsageReport` (workers/protocol.py). They are
applied under the job row's lock (jobs/services/events.py), once per (job, attempt, seq),
but possibly redelivered, out of order after a gap, or re-sent unchanged. So:

- every cumulative figure keeps its maximum: an older report arriving late changes nothing;
- GPU utilisation samples are merged by their timestamp: a sample seen twice counts once;
- the attempt is priced at the rate card in force when it started, chosen when its first
  report arrives and kept: a card created later never reprices it, and an attempt that
  started with no card in force stays at cost 0 (``rate_card`` null).

Idle GPUs: when the attempt's newest samples all stay under FINOPS_IDLE_GPU_PERCENT for
more than FINOPS_IDLE_GPU_MINUTES, ``idle_since`` is set to the first of them and
`job.gpu_idle` is audited once, with the cost so far; a busy sample clears it again
(`job.gpu_active`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum

from controlplane.finops.models import JobAttemptUsage
from controlplane.finops.rates import attempt_cost, cents, rate_card_in_force
from controlplane.projects.models import Project
from workers.protocol import USAGE_FIELD, JobEvent, ProtocolError, UsageReport

log = logging.getLogger(__name__)

# Samples kept per attempt for the page and idle detection: two hours at the worker's
# default 5 s interval (the mean covers them all).
MAX_STORED_SAMPLES = 1440

Audit = Callable[..., None]


def attempt_usage_apply(*, job: Any, event: JobEvent, now: datetime, audit: Audit) -> bool:
    """Fold the usage an event carries into its attempt's row; False when it carries none.

    The caller holds the job row's lock (so no other transaction writes this attempt's
    row meanwhile) and appends the audit events (`audit(action=, artifact=, payload=)`).
    A malformed report is logged and skipped: it must not stop the job's own event.
    """
    raw = event.payload.get(USAGE_FIELD)
    if raw is None:
        return False
    try:
        report = UsageReport.from_dict(raw)
    except ProtocolError as error:
        log.warning("job %s attempt %s: usage ignored: %s", job.pk, event.attempt, error)
        return False
    usage = (
        JobAttemptUsage.objects.select_related("rate_card")
        .filter(job_id=job.pk, attempt=event.attempt)
        .first()
    )
    if usage is None:
        usage = _new_usage(job, event, report)
    cost_before = usage.cost
    _merge(usage, report)
    usage.final = usage.final or event.type.is_terminal
    usage.updated_at = now
    if job.worker and not usage.worker:
        usage.worker = job.worker[:200]
    usage.cost = _cost(usage)
    _watch_idle(usage, job, audit)
    usage.save()
    if usage.cost != cost_before:
        # The spend moved: the budget's 80%/100% alerts are checked soon (debounced).
        from controlplane.finops.alerts import budget_check_soon

        budget_check_soon(job.project_id)
    return True


def _new_usage(job: Any, event: JobEvent, report: UsageReport) -> JobAttemptUsage:
    # When the attempt started, by the worker's clock: the report's time less its wall time.
    started_at = datetime.fromtimestamp(max(0.0, event.time - report.wall_seconds), tz=UTC)
    organisation_id = Project.objects.values_list("organisation_id", flat=True).get(
        pk=job.project_id
    )
    return JobAttemptUsage(
        job_id=job.pk,
        attempt=event.attempt,
        project_id=job.project_id,
        kind=job.kind,
        queue=job.queue,
        worker=(job.worker or "")[:200],
        started_at=started_at,
        rate_card=rate_card_in_force(organisation_id, started_at),
    )


def _merge(usage: JobAttemptUsage, report: UsageReport) -> None:
    usage.wall_seconds = max(usage.wall_seconds, report.wall_seconds)
    usage.cpu_seconds = max(usage.cpu_seconds, report.cpu_seconds)
    usage.peak_rss_bytes = max(usage.peak_rss_bytes, report.peak_rss_bytes)
    usage.gpu_seconds = max(usage.gpu_seconds, report.gpu_seconds)
    usage.bytes_read = max(usage.bytes_read, report.bytes_read)
    usage.bytes_written = max(usage.bytes_written, report.bytes_written)
    # A job reports "cpu" until it first allocates on a GPU: the most devices win.
    if report.device_count > usage.device_count or not usage.device_type:
        usage.device_type = report.device_type
        usage.device_count = report.device_count
    _merge_samples(usage, report.gpu_util)


def _merge_samples(usage: JobAttemptUsage, samples: tuple[tuple[float, float], ...]) -> None:
    kept = {float(moment): float(percent) for moment, percent in usage.gpu_util_samples}
    # Once the list is full, a sample older than all it keeps may have been counted and
    # dropped already: it is not counted (again).
    floor = min(kept) if len(kept) >= MAX_STORED_SAMPLES else float("-inf")
    fresh: dict[float, float] = {}
    for moment, percent in samples:
        if moment not in kept and moment > floor:
            fresh.setdefault(moment, percent)
    if not fresh:
        return
    count = usage.gpu_util_sample_count
    total = (usage.gpu_util_mean or 0.0) * count + sum(fresh.values())
    usage.gpu_util_sample_count = count + len(fresh)
    usage.gpu_util_mean = round(total / usage.gpu_util_sample_count, 2)
    kept.update(fresh)
    usage.gpu_util_samples = [[moment, kept[moment]] for moment in sorted(kept)][
        -MAX_STORED_SAMPLES:
    ]


def _cost(usage: JobAttemptUsage) -> Decimal:
    if usage.rate_card is None:
        return Decimal(0)
    return attempt_cost(
        usage.rate_card.rates,
        cpu_seconds=usage.cpu_seconds,
        gpu_seconds=usage.gpu_seconds,
        device_type=usage.device_type,
    )


def idle_run_start(samples: list[list[float]], threshold: float) -> float | None:
    """The time of the first sample of the trailing run under ``threshold`` (None: the
    newest sample is busy, or there is none)."""
    start = None
    for moment, percent in reversed(samples):
        if percent >= threshold:
            break
        start = moment
    return start


def _watch_idle(usage: JobAttemptUsage, job: Any, audit: Audit) -> None:
    if not usage.gpu_util_samples:
        return
    threshold = settings.FINOPS_IDLE_GPU_PERCENT
    start = idle_run_start(usage.gpu_util_samples, threshold)
    if start is None:
        if usage.idle_since is not None:
            audit(
                action="job.gpu_active",
                artifact=job,
                payload={"attempt": usage.attempt, "idle_since": usage.idle_since.isoformat()},
            )
            usage.idle_since = None
        return
    idle_minutes = (usage.gpu_util_samples[-1][0] - start) / 60
    if usage.idle_since is not None or idle_minutes <= settings.FINOPS_IDLE_GPU_MINUTES:
        return
    usage.idle_since = datetime.fromtimestamp(start, tz=UTC)
    others = (
        JobAttemptUsage.objects.filter(job_id=job.pk)
        .exclude(attempt=usage.attempt)
        .aggregate(cost=Sum("cost"))["cost"]
    ) or Decimal(0)
    audit(
        action="job.gpu_idle",
        artifact=job,
        payload={
            "attempt": usage.attempt,
            "idle_since": usage.idle_since.isoformat(),
            "idle_minutes": round(idle_minutes, 1),
            "threshold_percent": threshold,
            "device_type": usage.device_type,
            "device_count": usage.device_count,
            "cost_so_far": str(cents(others + usage.cost)),
            "currency": usage.rate_card.currency if usage.rate_card else None,
        },
    )
