from __future__ import annotations

from django.db.models import QuerySet

from controlplane.jobs.models import Job, JobEventRecord, JobMetric
from controlplane.projects.models import Project


def jobs_for(
    project: Project, *, state: str | None = None, kind: str | None = None
) -> QuerySet[Job]:
    jobs = Job.objects.filter(project=project).select_related("created_by")
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    return jobs.order_by("-created_at", "-id")


def job_log_tail(job: Job, *, limit: int = 200) -> list[JobEventRecord]:
    records = (
        JobEventRecord.objects.filter(job=job)
        .exclude(type="heartbeat")
        .order_by("-applied_at", "-id")[:limit]
    )
    return list(reversed(records))


def _metric_keys(job_id: int) -> list[str]:
    """The job's metric names by a loose index scan: one index probe per name, not per point."""
    from django.db import connection

    table = JobMetric._meta.db_table
    sql = (
        f"WITH RECURSIVE k(key) AS ("
        f" SELECT MIN(key) FROM {table} WHERE job_id = %s"
        f" UNION ALL"
        f" SELECT (SELECT MIN(key) FROM {table} WHERE job_id = %s AND key > k.key)"
        f" FROM k WHERE k.key IS NOT NULL"
        f") SELECT key FROM k WHERE key IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [job_id, job_id])
        return [row[0] for row in cursor.fetchall()]


def metric_series(jobs: list[Job], *, keys: list[str] | None = None, max_points: int = 300) -> dict:
    """{key: {job_id: [(step, value), ...]}}, each series averaged into at most `max_points`.

    A run can log a million points; charts need a few hundred. The averaging happens in
    the database (GROUP BY step / width) over the (job, key, step) index, so drawing a
    run costs about the same whatever its length.
    """
    from django.db.models import Avg, BigIntegerField, ExpressionWrapper, F, Max, Min, Value

    series: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for job in jobs:
        for key in keys or _metric_keys(job.pk):
            points = JobMetric.objects.filter(job_id=job.pk, key=key)
            span = points.aggregate(first=Min("step"), last=Max("step"))
            if span["first"] is None:
                continue
            width = max(1, -(-(span["last"] - span["first"] + 1) // max_points))
            bucket = ExpressionWrapper(F("step") / Value(width), output_field=BigIntegerField())
            averaged = (
                points.annotate(bucket=bucket)
                .values("bucket")
                .annotate(step=Max("step"), value=Avg("value"))
                .order_by("bucket")
            )
            series.setdefault(key, {})[job.pk] = [(p["step"], p["value"]) for p in averaged]
    return dict(sorted(series.items()))


def charts_for(jobs: list[Job], *, max_points: int = 300) -> list[tuple[str, dict[str, list]]]:
    """[(metric key, {"job 12": points, ...})]: what the run and compare pages draw."""
    labels = {
        job.pk: f"job {job.pk}" + (f" ({job.experiment})" if job.experiment else "") for job in jobs
    }
    return [
        (key, {labels[job_id]: points for job_id, points in by_job.items()})
        for key, by_job in metric_series(jobs, max_points=max_points).items()
    ]


def checkpoints_with_losses(job: Job) -> list[dict]:
    """The job's checkpoints with the train and validation loss logged at their step."""
    from controlplane.jobs.models import ArtifactKind, JobArtifact

    checkpoints = list(
        JobArtifact.objects.filter(job=job, kind=ArtifactKind.CHECKPOINT).order_by("step")
    )
    losses = {
        (m.key, m.step): m.value
        for m in JobMetric.objects.filter(
            job=job,
            key__in=["train/loss", "val/loss", "eval/loss"],  # eval/: post-training runs
            step__in=[c.step for c in checkpoints],
        )
    }
    return [
        {
            "artifact": c,
            "train_loss": losses.get(("train/loss", c.step)),
            "val_loss": losses.get(("val/loss", c.step), losses.get(("eval/loss", c.step))),
        }
        for c in checkpoints
    ]


def job_event_health(job: Job) -> dict:
    """What the job page shows of its event path: the current attempt's applied count and
    highest seq, the seqs still missing (a gap), resend requests, and parked events.

    Two small queries in the usual case (no gap, no dead letter).
    """
    from controlplane.jobs.models import DeadLetterEvent, JobEventStream

    stream = JobEventStream.objects.filter(job=job, attempt=job.attempt).first()
    dead_letters = list(
        DeadLetterEvent.objects.filter(job=job, resolved_at__isnull=True).order_by("attempt", "seq")
    )
    return {
        "stream": stream,
        "missing": stream.missing_seqs(limit=50) if stream is not None else [],
        "dead_letters": dead_letters,
    }
