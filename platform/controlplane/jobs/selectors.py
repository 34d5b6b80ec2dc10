from __future__ import annotations

from django.db.models import Count, Max, QuerySet

from controlplane.jobs.models import ArtifactKind, Job, JobArtifact, JobEventRecord, JobMetric
from controlplane.projects.models import Project


def jobs_for(
    project: Project,
    *,
    state: str | None = None,
    kind: str | None = None,
    experiment: str | None = None,
) -> QuerySet[Job]:
    jobs = Job.objects.filter(project=project).select_related("created_by")
    if state:
        jobs = jobs.filter(state=state)
    if kind:
        jobs = jobs.filter(kind=kind)
    if experiment:
        jobs = jobs.filter(experiment=experiment)
    return jobs.order_by("-created_at", "-id")


def job_in(project: Project, job_id: int) -> Job | None:
    """The job, or None when it is not one of this project's."""
    return (
        Job.objects.filter(project=project, pk=job_id)
        .select_related("created_by", "project")
        .first()
    )


def job_artifact_of(
    job: Job, artifact_id: int, *, kind: ArtifactKind | None = None
) -> JobArtifact | None:
    """One of the job's artifacts (of `kind` if given), or None."""
    artifacts = JobArtifact.objects.filter(job=job, pk=artifact_id)
    if kind is not None:
        artifacts = artifacts.filter(kind=kind)
    return artifacts.first()


def job_outputs(job: Job) -> QuerySet[JobArtifact]:
    return JobArtifact.objects.filter(job=job, kind=ArtifactKind.OUTPUT)


def job_sample_grid(job: Job) -> JobArtifact | None:
    """The newest sample grid an image job published (samples/step-N.png), if any."""
    return (
        job_outputs(job)
        .filter(name__startswith="samples/", name__endswith=".png")
        .order_by("-name")
        .first()
    )


def job_events(job: Job) -> QuerySet[JobEventRecord]:
    """Every event applied to the job, in the order the worker sent them."""
    return JobEventRecord.objects.filter(job=job).order_by("attempt", "seq")


def job_metrics(job: Job, *, key: str | None = None) -> QuerySet[JobMetric]:
    metrics = JobMetric.objects.filter(job=job).order_by("key", "step")
    return metrics.filter(key=key) if key else metrics


def experiments_of(project: Project) -> QuerySet:
    """The project's experiment names with their run count, most recently run first."""
    return (
        Job.objects.filter(project=project)
        .exclude(experiment="")
        .values("experiment")
        .annotate(runs=Count("id"), last=Max("created_at"))
        .order_by("-last")
    )


# A job's metric names by a loose index scan (one index probe per name, not per point),
# each with its step span from two more probes. Correlated subqueries and a recursive CTE
# only, so SQLite (the embedded default) runs the same text as PostgreSQL.
_SPANS_SQL = """
WITH RECURSIVE names(key) AS (
    SELECT MIN(key) FROM {table} WHERE job_id = %s
    UNION ALL
    SELECT (SELECT MIN(key) FROM {table} WHERE job_id = %s AND key > names.key)
    FROM names WHERE names.key IS NOT NULL
)
SELECT names.key,
    (SELECT MIN(step) FROM {table} WHERE job_id = %s AND key = names.key),
    (SELECT MAX(step) FROM {table} WHERE job_id = %s AND key = names.key)
FROM names WHERE names.key IS NOT NULL
"""

# One arm per curve, each grouped in the (job, key, step) index's order, so the database
# streams every curve's points into buckets without sorting them.
_BUCKETS_SQL = "SELECT key, MAX(step), AVG(value) FROM {table} WHERE job_id = %s AND key = %s GROUP BY key, step / %s"


def _averaged_series(job_id: int, keys: list[str] | None, max_points: int) -> list[tuple]:
    from django.db import connection

    table = JobMetric._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(_SPANS_SQL.format(table=table), [job_id] * 4)
        spans = [row for row in cursor.fetchall() if keys is None or row[0] in keys]
        if not spans:
            return []
        arms, params = [], []
        for key, first, last in spans:
            arms.append(_BUCKETS_SQL.format(table=table))
            params += [job_id, key, max(1, -(-(last - first + 1) // max_points))]
        cursor.execute(" UNION ALL ".join(arms) + " ORDER BY 1, 2", params)
        return cursor.fetchall()


def metric_series(jobs: list[Job], *, keys: list[str] | None = None, max_points: int = 300) -> dict:
    """{key: {job_id: [(step, value), ...]}}, each series averaged into at most `max_points`.

    A run can log a million points; charts need a few hundred. The averaging happens in
    the database (GROUP BY step / width) over the (job, key, step) index, so drawing a
    run costs about the same whatever its length, in two queries per run.
    """
    series: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for job in jobs:
        for key, step, value in _averaged_series(job.pk, keys, max_points):
            series.setdefault(key, {}).setdefault(job.pk, []).append((step, value))
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


# A running job's page polls its charts' data every 2 s, once per viewer (charts.json):
# they are shared for this long, so ten people watching a run cost one series query, not ten.
LIVE_CHARTS_SECONDS = 2


def job_charts(job: Job) -> list[tuple[str, dict[str, list]]]:
    """The run page's charts, cached: a finished attempt's for an hour, a live one's briefly.

    Once a job is terminal no event of its attempt is applied any more (a resumed or
    re-dispatched job is a new attempt, a new cache key), so that key needs no
    invalidation; a live job's charts may lag by LIVE_CHARTS_SECONDS. A cache that is
    down costs the query, never the page.
    """
    from django.core.cache import cache

    if job.is_terminal:
        key, seconds = f"job-charts:{job.pk}:{job.attempt}:{job.state}", 3600
    else:
        key, seconds = f"job-charts:{job.pk}:{job.attempt}:live", LIVE_CHARTS_SECONDS
    try:
        charts = cache.get(key)
    except Exception:  # noqa: BLE001 - the cache is an optimisation here
        charts = None
    if charts is None:
        charts = charts_for([job])
        try:
            cache.set(key, charts, seconds)
        except Exception:  # noqa: BLE001
            pass
    return charts


def checkpoints_with_losses(job: Job) -> list[dict]:
    """The job's checkpoints, each with its step and the train and validation loss logged
    at that step: [{"artifact", "step", "train_loss", "val_loss"}]."""
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
            "step": c.step,
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
