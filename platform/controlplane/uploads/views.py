"""Pages of the uploads app: upload a file to a project, start an inspect job on it."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.dashboard.forms import InspectJobForm
from controlplane.jobs.views import job_started
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.projects.views import project_detail
from controlplane.sizes import human_size
from controlplane.uploads.selectors import upload_in
from controlplane.uploads.services import UploadError, upload_create_from_request
from workers.protocol import JobKind


@project_page(Action.RUN)
@require_POST
def upload_file(request: ProjectRequest, project: Project) -> HttpResponse:
    try:
        upload = upload_create_from_request(
            project=project, actor=request.user, files=request.FILES
        )
    except UploadError as error:
        # Nothing was stored: the project's page again with the reason, and a 4xx that says so.
        messages.error(request, str(error))
        response = project_detail(request, project.pk)
        response.status_code = error.status
        return response
    messages.success(
        request,
        f"Uploaded {upload.filename} ({human_size(upload.size)}, sha256 {upload.sha256[:12]}…).",
    )
    return redirect("project-detail", project_id=project.pk)


@project_page(Action.RUN)
def inspect_job_start(request: ProjectRequest, project: Project, upload_id: int) -> HttpResponse:
    upload = found_or_404(
        upload_in(project, upload_id), f"upload {upload_id} not found in this project"
    )
    form = InspectJobForm(request.POST or None, initial={"upload_id": upload.pk})
    if request.method == "POST" and form.is_valid():
        started = job_started(
            request,
            project,
            kind=JobKind.INSPECT,
            params={k: v for k, v in form.cleaned_data.items() if v is not None},
            show_errors=lambda errors: _show_inspect_errors(form, errors),
        )
        if started:
            return started
    return render(
        request,
        "uploads/inspect_start.html",
        {"project": project, "upload": upload, "form": form},
    )


def _show_inspect_errors(form: InspectJobForm, errors: dict[str, list[str]]) -> None:
    for field, problems in errors.items():
        form.add_error(field if field in form.fields else None, " ".join(problems))
