"""Dashboard pages. Each view serves its full page, and its fragment to htmx requests."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from controlplane.api.params import page_text_param
from controlplane.audit.selectors import audit_events_for
from controlplane.audit.services import audit_verify
from controlplane.dashboard.access import project_page
from controlplane.dashboard.forms import (
    ImageJobForm,
)
from controlplane.dashboard.posttrain_views import posttrain_form
from controlplane.dashboard.selectors import overview_for
from controlplane.health import liveness_report, readiness_report
from controlplane.jobs.kinds import JobRequestError
from controlplane.jobs.models import Job, JobState
from controlplane.jobs.posttrain import has_model
from controlplane.jobs.selectors import (
    checkpoints_with_losses,
    job_charts,
    job_event_health,
    job_log_tail,
    jobs_for,
)
from controlplane.jobs.services import JobError, job_cancel, job_create, job_resume
from controlplane.projects.permissions import Action


def healthz(request) -> JsonResponse:
    """Liveness: cheap (no network call), always 200; names the dependencies seen failing."""
    return JsonResponse(liveness_report())


def readyz(request) -> JsonResponse:
    """Readiness: database, broker, object store and cache checked, each with its latency;
    503 only when the database does not answer (see controlplane/health.py)."""
    report, ready = readiness_report()
    return JsonResponse(report, status=200 if ready else 503)


@login_required
def overview(request):
    return render(request, "dashboard/overview.html", overview_for(request.user))


@project_page()
def job_list(request, project):
    state = request.GET.get("state") or None
    if state not in JobState.values:
        state = None
    form = ImageJobForm(request.POST or None)
    if request.method == "POST":
        if not request.can["run"]:
            raise PermissionDenied("only engineers and owners start jobs")
        if form.is_valid():
            try:
                job = job_create(
                    project=project,
                    kind=form.cleaned_data["kind"],
                    actor=request.user,
                    params=form.job_params(),
                    experiment=form.cleaned_data["experiment"] or "",
                )
            except JobRequestError as error:
                for field, problems in error.errors.items():
                    form.add_error(None, f"{field}: {' '.join(problems)}")
            else:
                messages.success(request, f"Job {job.pk} ({job.kind}) queued.")
                return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    page = Paginator(jobs_for(project, state=state), 25).get_page(request.GET.get("page"))
    context = {
        "project": project,
        "page": page,
        "state": state,
        "states": JobState.choices,
        "image_form": form,
    }
    if request.htmx:
        return render(request, "dashboard/_job_rows.html", context)
    return render(request, "dashboard/job_list.html", context)


@project_page()
def job_detail(request, project, job_id: int):
    job = get_object_or_404(Job.objects.select_related("created_by"), project=project, pk=job_id)
    context = {
        "project": project,
        "job": job,
        "log": job_log_tail(job, limit=100),
        "artifacts": job.artifacts.filter(kind="output"),
        "grid": job.artifacts.filter(
            kind="output", name__startswith="samples/", name__endswith=".png"
        )
        .order_by("-name")
        .first(),
        "checkpoints": checkpoints_with_losses(job),
        "event_health": job_event_health(job),
        "charts": job_charts(job),
        "result_hidden": ("records", "samples", "files", "report", "preview"),
    }
    if request.htmx:
        return render(request, "dashboard/_job_status.html", context)
    if request.can["run"] and has_model(job):
        context["posttrain_form"] = posttrain_form(project)
    return render(request, "dashboard/job_detail.html", context)


_CONTENT_TYPES = {".png": "image/png", ".json": "application/json", ".txt": "text/plain"}


@project_page()
def job_artifact(request, project, job_id: int, artifact_id: int):
    """An artifact's bytes, streamed from the object store (sample grids, reports, weights)."""
    from django.http import StreamingHttpResponse

    from controlplane.jobs.models import JobArtifact
    from controlplane.storage import object_store

    artifact = get_object_or_404(JobArtifact, pk=artifact_id, job_id=job_id, job__project=project)
    suffix = "." + artifact.name.rsplit(".", 1)[-1] if "." in artifact.name else ""
    response = StreamingHttpResponse(
        object_store().iter_chunks(artifact.object_key, chunk_size=1024 * 1024),
        content_type=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
    )
    response["Content-Length"] = str(artifact.size)
    if suffix not in _CONTENT_TYPES:
        response["Content-Disposition"] = (
            f'attachment; filename="{artifact.name.rsplit("/", 1)[-1]}"'
        )
    return response


@project_page(Action.RUN)
@require_POST
def job_resume_view(request, project, job_id: int):
    job = get_object_or_404(Job, project=project, pk=job_id)
    checkpoint_id = request.POST.get("checkpoint_id", "")
    # Not a number ("abc", "²"): no checkpoint, the same message as an unknown id.
    checkpoint = (
        job.artifacts.filter(pk=int(checkpoint_id), kind="checkpoint").first()
        if checkpoint_id.isascii() and checkpoint_id.isdigit()
        else None
    )
    if checkpoint is None:
        messages.error(request, "Pick one of this job's checkpoints to resume from.")
        return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    try:
        job_resume(job=job, checkpoint=checkpoint, actor=request.user)
    except JobError as error:
        messages.error(request, str(error))
    else:
        messages.info(request, f"Job {job.pk} resumes from step {checkpoint.step}.")
    return redirect("job-detail", project_id=project.pk, job_id=job.pk)


@project_page(Action.RUN)
@require_POST
def job_cancel_view(request, project, job_id: int):
    job = get_object_or_404(Job, project=project, pk=job_id)
    try:
        job_cancel(job=job, actor=request.user)
    except JobError as error:
        messages.error(request, str(error))
    else:
        messages.info(request, f"Cancel requested for job {job.pk}.")
    return redirect("job-detail", project_id=project.pk, job_id=job.pk)


@project_page()
def audit_timeline(request, project):
    artifact_type = page_text_param(request, "artifact_type")
    artifact_id = page_text_param(request, "artifact_id")
    events = audit_events_for(project, artifact_type=artifact_type, artifact_id=artifact_id)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    actors = dict(
        User.objects.filter(pk__in={e.actor_id for e in page if e.actor_id}).values_list(
            "pk", "username"
        )
    )
    verification = audit_verify(project)
    return render(
        request,
        "dashboard/audit.html",
        {
            "project": project,
            "page": page,
            "actors": actors,
            "artifact_type": artifact_type,
            "artifact_id": artifact_id,
            "verification": verification[0] if verification else None,
        },
    )
