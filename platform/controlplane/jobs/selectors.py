from __future__ import annotations

from django.db.models import QuerySet

from controlplane.jobs.models import Job, JobEventRecord
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
