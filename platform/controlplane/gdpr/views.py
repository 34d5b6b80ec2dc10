"""The request pages: the list with each request's deadline countdown, the form that
files one, a request's page (identifiers as the role may see them, the review and
extension forms, what the job has done), the review queue, an access request's one
download of its export, and a completed request's printable certificate (and its JSON).

Writes go through the services the API calls, so a page can do nothing the API would
refuse; a refusal is a message on the page, never an error page.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.gdpr import selectors, services
from controlplane.gdpr.errors import GdprError
from controlplane.gdpr.forms import ExtendForm, FileForm, ReviewForm
from controlplane.gdpr.models import RequestState, SubjectRequest
from controlplane.orgs.selectors import is_org_admin
from controlplane.projects.models import Project

LIST_LIMIT = 200


def _with_deadlines(rows) -> list[tuple[SubjectRequest, dict]]:
    return [(row, selectors.deadline_of(row)) for row in rows]


def _error_text(error: GdprError) -> str:
    if error.fields:
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in error.fields.items())
    return error.message


@project_page()
def request_list(request: ProjectRequest, project: Project) -> HttpResponse:
    state = request.GET.get("state")
    state = state if state in RequestState.values else None
    rows = selectors.requests_of(project, state=state)[:LIST_LIMIT]
    return render(
        request,
        "gdpr/request_list.html",
        {
            "project": project,
            "rows": _with_deadlines(rows),
            "state": state,
            "states": RequestState.choices,
            "may_file": _may_file(request.user, project),
            "pending": selectors.pending_review_of(project).count(),
        },
    )


def _may_file(user, project: Project) -> bool:
    """A project request (by role) or an organisation one (by the organisation's admins)."""
    return services.may_file(user, project) or is_org_admin(user, project.organisation)


@project_page()
def request_file(request: ProjectRequest, project: Project) -> HttpResponse:
    if not _may_file(request.user, project):
        raise PermissionDenied(
            "filing a data-subject request needs the owner, engineer or compliance role "
            "(or, for every project of the organisation, the organisation's admin role)"
        )
    form = FileForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                filed = services.request_file(
                    project=project,
                    actor=request.user,
                    kind=form.cleaned_data["kind"],
                    identifiers=form.cleaned_data["identifiers"],
                    legal_basis=form.cleaned_data["legal_basis"],
                    received_at=form.cleaned_data["received_on"],
                    scope=form.cleaned_data["scope"],
                )
            except GdprError as error:
                form.add_service_errors(error)
                status = error.status
            else:
                messages.success(
                    request, f"Request #{filed.pk} filed: it waits for a second reviewer."
                )
                return redirect("gdpr-request", project_id=project.pk, subject_request_id=filed.pk)
        else:
            status = 400
    context = {"project": project, "form": form, "organisation": project.organisation}
    return render(request, "gdpr/request_file.html", context, status=status)


def _request(project: Project, subject_request_id: int) -> SubjectRequest:
    return found_or_404(
        selectors.request_in(project, subject_request_id),
        f"subject request {subject_request_id} not found",
    )


@project_page()
def request_detail(request: ProjectRequest, project: Project, subject_request_id: int):
    return _detail(request, project, _request(project, subject_request_id))


def _detail(
    request: ProjectRequest, project: Project, subject_request: SubjectRequest, status: int = 200
) -> HttpResponse:
    reviewer = services.may_see_identifiers(request.user, subject_request)
    decider = services.may_review_request(request.user, subject_request)
    progress = subject_request.progress or {}
    return render(
        request,
        "gdpr/request_detail.html",
        {
            "project": project,
            "r": subject_request,
            "deadline": selectors.deadline_of(subject_request),
            "identifiers": selectors.identifiers_shown(subject_request, clear=reviewer),
            "in_clear": reviewer,
            "may_decide": decider
            and subject_request.state == RequestState.PENDING_REVIEW
            and subject_request.filed_by_id != request.user.pk,
            # A child follows its organisation request's deadline.
            "may_extend": decider and subject_request.is_open and not subject_request.parent_id,
            "may_download": services.may_take_export(request.user, subject_request)
            and not subject_request.parent_id,
            "children": selectors.children_shown(subject_request, request.user),
            "parent_openable": selectors.parent_openable(subject_request, request.user),
            "review_form": ReviewForm(),
            "extend_form": ExtendForm(),
            "steps": progress.get("steps") if isinstance(progress.get("steps"), list) else [],
            "findings": (
                progress.get("findings") if isinstance(progress.get("findings"), list) else []
            ),
            "progress": progress,
            "certificate": subject_request.certificate or {},
        },
        status=status,
    )


def _to_detail(subject_request: SubjectRequest) -> HttpResponse:
    return redirect(
        "gdpr-request",
        project_id=subject_request.project_id,
        subject_request_id=subject_request.pk,
    )


@project_page()
@require_POST
def request_review(request: ProjectRequest, project: Project, subject_request_id: int):
    """Approve or reject (owners and compliance officers; the service refuses the filer)."""
    subject_request = _request(project, subject_request_id)
    form = ReviewForm(request.POST)
    back = request.POST.get("next") == "queue"
    target = redirect("gdpr-review-queue", project_id=project.pk) if back else None
    if not form.is_valid():
        messages.error(request, "Say approve or reject, and why.")
        return target or _to_detail(subject_request)
    decide = (
        services.request_approve
        if form.cleaned_data["decision"] == "approve"
        else services.request_reject
    )
    try:
        decided = decide(
            request=subject_request, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except GdprError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(request, f"Request #{decided.pk} {decided.state}.")
    return target or _to_detail(subject_request)


@project_page()
@require_POST
def request_extend(request: ProjectRequest, project: Project, subject_request_id: int):
    subject_request = _request(project, subject_request_id)
    form = ExtendForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Pick 1 or 2 months and say why.")
        return _to_detail(subject_request)
    try:
        extended = services.request_extend(
            request=subject_request, actor=request.user, **form.cleaned_data
        )
    except GdprError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(request, f"Deadline extended to {extended.deadline_at:%Y-%m-%d}.")
    return _to_detail(subject_request)


@project_page()
def review_queue(request: ProjectRequest, project: Project) -> HttpResponse:
    rows = [
        (
            row,
            deadline,
            selectors.identifiers_shown(row, clear=services.may_see_identifiers(request.user, row)),
            # An organisation request is decided by the organisation's admins.
            services.may_review_request(request.user, row),
        )
        for row, deadline in _with_deadlines(selectors.pending_review_of(project)[:LIST_LIMIT])
    ]
    return render(
        request,
        "gdpr/review_queue.html",
        {"project": project, "rows": rows, "review_form": ReviewForm()},
    )


@project_page()
@require_POST
def request_export(request: ProjectRequest, project: Project, subject_request_id: int):
    """An access request's export, once (gdpr/access.py); a POST, since it deletes it."""
    from controlplane.gdpr.access import export_take

    subject_request = _request(project, subject_request_id)
    try:
        name, data = export_take(request=subject_request, actor=request.user)
    except GdprError as error:
        if error.status == 403:
            # Members read the request: the refusal is said on its page (who may download).
            messages.error(request, error.message)
            return _detail(request, project, subject_request, status=403)
        return HttpResponse(error.message, status=error.status, content_type="text/plain")
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


def _completed(request: ProjectRequest, project: Project, subject_request_id: int):
    subject_request = _request(project, subject_request_id)
    if not services.may_see_identifiers(request.user, subject_request):
        raise PermissionDenied("the certificate is for the owner and compliance officers")
    if subject_request.state != RequestState.COMPLETED or not subject_request.certificate:
        raise Http404("the certificate is written when the request completes")
    return subject_request


def _shown(certificate: dict) -> dict:
    """An erasure's and an access request's certificates differ in their sections: the
    page reads one shape, with what a kind has not left empty."""
    shown = {
        "found": [],
        "found_nowhere": False,
        "rewritten": [],
        "deleted": [],
        "archive": {},
        "models_flagged": [],
        "residue_scan": {},
        "export": {},
        "audit_events": [],
        "chain_head": None,
        **certificate,
    }
    shown["job"] = certificate.get("erasure_job") or certificate.get("search_job")
    shown["archive"] = {"records_removed": 0, "objects": [], **shown["archive"]}
    shown["residue_scan"] = {
        "clean": False,
        "object_versions_read": 0,
        "hit_count": 0,
        **shown["residue_scan"],
    }
    return shown


@project_page()
def request_certificate(request: ProjectRequest, project: Project, subject_request_id: int):
    """The certificate as a printable page (no scripts: print CSS only)."""
    subject_request = _completed(request, project, subject_request_id)
    if subject_request.is_parent:
        return render(
            request,
            "gdpr/certificate_organisation.html",
            {"project": project, "r": subject_request, "c": subject_request.certificate},
        )
    return render(
        request,
        "gdpr/certificate.html",
        {"project": project, "r": subject_request, "c": _shown(subject_request.certificate)},
    )


@project_page()
def request_certificate_json(request: ProjectRequest, project: Project, subject_request_id: int):
    subject_request = _completed(request, project, subject_request_id)
    response = JsonResponse(subject_request.certificate, json_dumps_params={"indent": 2})
    name = f"subject-request-{subject_request.pk}-certificate.json"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
