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


# One statement per job: the job's metric names by a loose index scan (one index probe per
# name, not per point), each name's step span by two index probes, then the points averaged
# into buckets of `width` steps. Integer division and correlated subqueries only, so SQLite
# (the embedded default) runs the same text as PostgreSQL.
_SERIES_SQL = """
WITH RECURSIVE names(key) AS (
    SELECT MIN(key) FROM {table} WHERE job_id = %s
    UNION ALL
    SELECT (SELECT MIN(key) FROM {table} WHERE job_id = %s AND key > names.key)
    FROM names WHERE names.key IS NOT NULL
),
spans(key, width) AS MATERIALIZED (
    SELECT names.key,
        ((SELECT MAX(step) FROM {table} WHERE job_id = %s AND key = names.key)
         - (SELECT MIN(step) FROM {table} WHERE job_id = %s AND key = names.key)
         + %s) / %s
    FROM names WHERE names.key IS NOT NULL {key_filter}
)
SELECT m.key, MAX(m.step) AS last_step, AVG(m.value)
FROM {table} m JOIN spans ON spans.key = m.key
WHERE m.job_id = %s
GROUP BY m.key, m.step / spans.width
ORDER BY m.key, last_step
"""


def _averaged_series(job_id: int, keys: list[str] | None, max_points: int) -> list[tuple]:
    from django.db import connection

    key_filter = ""
    key_params: list = []
    if keys is not None:
        key_filter = f"AND names.key IN ({', '.join(['%s'] * len(keys))})" if keys else "AND 1 = 0"
        key_params = list(keys)
    sql = _SERIES_SQL.format(table=JobMetric._meta.db_table, key_filter=key_filter)
    params = [job_id, job_id, job_id, job_id, max_points, max_points, *key_params, job_id]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def metric_series(jobs: list[Job], *, keys: list[str] | None = None, max_points: int = 300) -> dict:
    """{key: {job_id: [(step, value), ...]}}, each series averaged into at most `max_points`.

    A run can log a million points; charts need a few hundred. The averaging happens in
    the database (GROUP BY step / width) over the (job, key, step) index, so drawing a
    run costs about the same whatever its length, and one query per run.
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


def job_charts(job: Job) -> list[tuple[str, dict[str, list]]]:
    """The run page's charts; a finished attempt's are cached, since they cannot change.

    Once a job is terminal no event of its attempt is applied any more (a resumed or
    re-dispatched job is a new attempt, a new cache key), so the key needs no
    invalidation. A cache that is down costs the query, never the page.
    """
    from django.core.cache import cache

    if not job.is_terminal or job.finished_at is None:
        return charts_for([job])
    key = f"job-charts:{job.pk}:{job.attempt}:{job.finished_at.timestamp()}"
    try:
        charts = cache.get(key)
    except Exception:  # noqa: BLE001 - the cache is an optimisation here
        charts = None
    if charts is None:
        charts = charts_for([job])
        try:
            cache.set(key, charts, 3600)
        except Exception:  # noqa: BLE001
            pass
    return charts


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
