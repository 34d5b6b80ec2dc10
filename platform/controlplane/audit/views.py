"""Pages of the audit app: a project's audit timeline, with the chain's verification."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import render

from controlplane.api.params import page_text_param
from controlplane.audit.export import export_response
from controlplane.audit.selectors import actor_names, audit_events_for
from controlplane.audit.services import audit_verify
from controlplane.dashboard.access import ProjectRequest, project_page
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action


@project_page()
def audit_timeline(request: ProjectRequest, project: Project) -> HttpResponse:
    """The project's events, newest first; ?artifact_type=&artifact_id= narrows to one
    artifact's history (a job, an upload, a dataset version)."""
    artifact_type = page_text_param(request, "artifact_type")
    artifact_id = page_text_param(request, "artifact_id")
    events = audit_events_for(project, artifact_type=artifact_type, artifact_id=artifact_id)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    verification = audit_verify(project)
    return render(
        request,
        "audit/audit.html",
        {
            "project": project,
            "page": page,
            "actors": actor_names(page),
            "artifact_type": artifact_type,
            "artifact_id": artifact_id,
            "verification": verification[0] if verification else None,
        },
    )


@project_page(Action.REVIEW)
def audit_export(request: ProjectRequest, project: Project) -> HttpResponse:
    """The chain as JSONL for an auditor's offline check (owners, compliance officers)."""
    return export_response(project, request.user)
