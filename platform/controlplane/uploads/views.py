"""Pages of the uploads app: upload a file to a project, start an inspect job on it."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, project_page
from controlplane.dashboard.forms import InspectJobForm
from controlplane.jobs.kinds import JobRequestError
from controlplane.jobs.services import job_create
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.projects.views import project_detail
from controlplane.uploads.selectors import upload_in
from controlplane.uploads.services import UploadError, single_uploaded_file, upload_create
from workers.protocol import JobKind


@project_page(Action.RUN)
@require_POST
def upload_file(request: ProjectRequest, project: Project) -> HttpResponse:
    try:
        uploaded = single_uploaded_file(request.FILES, "file")
        upload = upload_create(
            project=project,
            actor=request.user,
            stream=uploaded.file,
            filename=uploaded.name,
            size=uploaded.size,
            content_type=uploaded.content_type or "",
        )
    except UploadError as error:
        # Nothing was stored: the project's page again with the reason, and a 4xx that says so.
        messages.error(request, str(error))
        response = project_detail(request, project.pk)
        response.status_code = error.status
        return response
    messages.success(
        request,
        f"Uploaded {upload.filename} ({upload.size} bytes, sha256 {upload.sha256[:12]}…).",
    )
    return redirect("project-detail", project_id=project.pk)


@project_page(Action.RUN)
def inspect_job_start(request: ProjectRequest, project: Project, upload_id: int) -> HttpResponse:
    upload = upload_in(project, upload_id)
    if upload is None:
        raise Http404(f"upload {upload_id} not found in this project")
    form = InspectJobForm(request.POST or None, initial={"upload_id": upload.pk})
    if request.method == "POST" and form.is_valid():
        params = {k: v for k, v in form.cleaned_data.items() if v is not None}
        try:
            job = job_create(
                project=project, kind=JobKind.INSPECT, params=params, actor=request.user
            )
        except JobRequestError as error:
            for field, errors in error.errors.items():
                form.add_error(field if field in form.fields else None, " ".join(errors))
        else:
            messages.success(request, f"Job {job.pk} queued.")
            return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    return render(
        request,
        "uploads/inspect_start.html",
        {"project": project, "upload": upload, "form": form},
    )
