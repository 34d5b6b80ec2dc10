"""Figures for the overview page, computed in a few aggregate queries."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db.models import Count, Sum

from controlplane.jobs.models import Job, JobArtifact, JobState
from controlplane.projects.selectors import projects_visible_to
from controlplane.uploads.models import Upload


@dataclass(frozen=True)
class ProjectStorage:
    project_id: int
    name: str
    upload_bytes: int
    artifact_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.upload_bytes + self.artifact_bytes


def overview_for(user: User) -> dict:
    from controlplane.policies.page_selectors import OVERVIEW_DAYS as COMPLIANCE_DAYS
    from controlplane.policies.page_selectors import overview as compliance_overview

    projects = projects_visible_to(user)
    project_ids = list(projects.values_list("pk", flat=True))
    jobs = Job.objects.filter(project_id__in=project_ids)
    by_state = dict(jobs.values_list("state").annotate(n=Count("id")).order_by())
    upload_bytes = dict(
        Upload.objects.filter(project_id__in=project_ids)
        .values_list("project_id")
        .annotate(total=Sum("size"))
        .order_by()
    )
    artifact_bytes = dict(
        JobArtifact.objects.filter(job__project_id__in=project_ids)
        .values_list("job__project_id")
        .annotate(total=Sum("size"))
        .order_by()
    )
    storage = [
        ProjectStorage(p.pk, p.name, upload_bytes.get(p.pk) or 0, artifact_bytes.get(p.pk) or 0)
        for p in projects.order_by("name")
    ]
    return {
        "project_count": len(project_ids),
        "jobs_by_state": [
            (state.label, state.value, by_state.get(state.value, 0)) for state in JobState
        ],
        "job_count": sum(by_state.values()),
        "storage": storage,
        "storage_total": sum(item.total_bytes for item in storage),
        "recent_jobs": jobs.select_related("project").order_by("-created_at")[:10],
        # Policy, open violations by rule, waivers, holds and recent denials per project.
        "compliance": compliance_overview(projects=projects),
        "compliance_days": COMPLIANCE_DAYS,
    }
