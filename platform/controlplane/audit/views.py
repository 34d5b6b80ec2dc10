"""Pages of the audit app: a project's audit timeline (filters, exports, the chain's
verification) and the chain badge every project page shows."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from controlplane.audit.event_export import ExportFormat, events_export_response
from controlplane.audit.export import export_response
from controlplane.audit.filters import AuditFilterForm
from controlplane.audit.selectors import actor_names
from controlplane.audit.status import chain_status, chain_status_full
from controlplane.dashboard.access import ProjectRequest, project_page
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action

EVENTS_PER_PAGE = 50


@project_page()
def audit_timeline(request: ProjectRequest, project: Project) -> HttpResponse:
    """The project's events, newest first, narrowed by actor, action, artifact (type and
    id: one artifact's history) and date range; the chain's status (cached, see
    controlplane.audit.status, with a button to verify in full now)."""
    form = AuditFilterForm(request.GET, project=project)
    return _timeline(request, project, form, chain_status(project))


@require_POST
@project_page(Action.REVIEW)
def audit_verify_now(request: ProjectRequest, project: Project) -> HttpResponse:
    """Verify the whole chain and its anchors now (the page and the badge show the cached
    result otherwise: a full check of a long chain costs seconds)."""
    status = chain_status_full(project)
    if status is None:
        messages.info(request, "No audit events yet: nothing to verify.")
    elif status.verification.ok:
        messages.success(request, f"Verified in full: {status.verification.describe()}.")
    else:
        messages.error(request, f"Verified in full: {status.verification.describe()}.")
    return redirect("audit-timeline", project_id=project.pk)


def _timeline(request, project, form: AuditFilterForm, status, *, http_status: int = 200):
    page = Paginator(form.events(), EVENTS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "audit/audit.html",
        {
            "project": project,
            "form": form,
            "filters": form.query_string(),
            "page": page,
            "actors": actor_names(page),
            "status": status,
            "verification": status.verification if status else None,
        },
        status=http_status,
    )


@project_page()
def audit_badge(request: ProjectRequest, project: Project) -> HttpResponse:
    """The chain badge of the base layout (loaded by htmx after the page): the cached
    verification (controlplane.audit.status), never a full one per page view."""
    status = chain_status(project)
    return render(
        request,
        "audit/_chain_badge.html",
        {
            "project": project,
            "status": status,
            "verification": status.verification if status else None,
            "linked": True,
        },
    )


@project_page(Action.REVIEW)
def audit_export(request: ProjectRequest, project: Project) -> HttpResponse:
    """The chain as JSONL for an auditor's offline check (owners, compliance officers)."""
    return export_response(project, request.user)


@project_page(Action.REVIEW)
def audit_events_export(
    request: ProjectRequest, project: Project, export_format: str
) -> HttpResponse:
    """The events the page's filters select, as CSV or JSONL (owners, compliance officers)."""
    try:
        chosen = ExportFormat(export_format)
    except ValueError:
        raise Http404(f"no export as {export_format}: csv or jsonl") from None
    form = AuditFilterForm(request.GET, project=project)
    if not form.is_valid():  # the page again, its errors next to the fields
        return _timeline(request, project, form, chain_status(project), http_status=400)
    return events_export_response(
        project=project, actor=request.user, form=form, export_format=chosen
    )
