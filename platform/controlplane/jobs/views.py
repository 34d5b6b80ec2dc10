"""Pages of the jobs app: the job list, a job's page (and the status fragment htmx polls),
its artifacts, cancel, resume and post-train, and the experiments compare page.

The compare page is a jobs page: an experiment is a name on a Job (no model of its own),
and the page reads only job selectors (runs and their metric series).
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from controlplane.api.params import page_text_param
from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.dashboard.forms import ImageJobForm, PostTrainJobForm
from controlplane.jobs.models import ArtifactKind, Job, JobState
from controlplane.jobs.posttrain import has_model, pair_versions_for, reward_jobs_for
from controlplane.jobs.requests import JobRequestError
from controlplane.jobs.selectors import (
    charts_for,
    checkpoints_with_losses,
    experiments_of,
    job_artifact_of,
    job_charts,
    job_event_health,
    job_in,
    job_log_tail,
    job_outputs,
    job_sample_grid,
    jobs_for,
    runs_with_metrics,
)
from controlplane.jobs.services import JobError, job_cancel, job_create, job_resume
from controlplane.policies.errors import PolicyDenied
from controlplane.policies.pages import denied_show
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.storage import object_store

MAX_COMPARED = 8  # curves on one compare chart stay readable up to about this many runs
_CONTENT_TYPES = {".png": "image/png", ".json": "application/json", ".txt": "text/plain"}


def _job(project: Project, job_id: int) -> Job:
    return found_or_404(job_in(project, job_id), f"job {job_id} not found in this project")


def job_started(
    request: ProjectRequest,
    project: Project,
    *,
    kind: str,
    params: dict,
    show_errors: Callable[[dict[str, list[str]]], None],
    experiment: str = "",
    note: str = "",
) -> HttpResponse | None:
    """Start a job from a page's form, through the same service as the API: the redirect to
    its page, or None once the platform's field errors are on the form (`show_errors`) or
    the policy's refusal is set for the page's banner (`denied_show`)."""
    try:
        job = job_create(
            project=project, kind=kind, actor=request.user, params=params, experiment=experiment
        )
    except JobRequestError as error:
        show_errors(error.errors)
        return None
    except PolicyDenied as error:
        # The banner above the form (or on the page a caller redirects to) names each
        # rule that said no, why, how to fix it, and links to the rule.
        denied_show(request, error)
        return None
    messages.success(request, f"Job {job.pk} ({job.kind}) queued{note}.")
    return redirect("job-detail", project_id=project.pk, job_id=job.pk)


def _errors_above_form(form: forms.Form) -> Callable[[dict[str, list[str]]], None]:
    def show(errors: dict[str, list[str]]) -> None:
        for field, problems in errors.items():
            form.add_error(None, f"{field}: {' '.join(problems)}")

    return show


@project_page()
def job_list(request: ProjectRequest, project: Project) -> HttpResponse:
    """The project's jobs (htmx polls the rows), and the form that trains an image model."""
    state = request.GET.get("state") or None
    if state not in JobState.values:
        state = None
    form = ImageJobForm(request.POST or None)
    if request.method == "POST":
        if not request.can["run"]:
            raise PermissionDenied("only engineers and owners start jobs")
        started = form.is_valid() and job_started(
            request,
            project,
            kind=form.cleaned_data["kind"],
            params=form.job_params(),
            experiment=form.cleaned_data["experiment"] or "",
            show_errors=_errors_above_form(form),
        )
        if started:
            return started
    page = Paginator(jobs_for(project, state=state), 25).get_page(request.GET.get("page"))
    context = {
        "project": project,
        "page": page,
        "jobs": page.object_list,
        "state": state,
        "states": JobState.choices,
        "image_form": form,
    }
    if request.htmx:
        return render(request, "jobs/_job_rows.html", context)
    return render(request, "jobs/job_list.html", context)


@project_page()
def job_detail(request: ProjectRequest, project: Project, job_id: int) -> HttpResponse:
    """A job's page; htmx polls its status fragment while the job runs."""
    job = _job(project, job_id)
    # An inspect job's `records` are the first records; other kinds' (data pipeline,
    # erasure) are a count, shown among the figures.
    records = job.result.get("records") if isinstance(job.result, dict) else None
    first_records = records if isinstance(records, list) else None
    context = {
        "project": project,
        "job": job,
        "log": job_log_tail(job, limit=100),
        "artifacts": job_outputs(job),
        "grid": job_sample_grid(job),
        "checkpoints": checkpoints_with_losses(job),
        "event_health": job_event_health(job),
        "charts": job_charts(job),
        # (An evaluation's details, samples included, are shown on the model version's page.)
        "result_hidden": ("samples", "files", "report", "preview", "details")
        + (("records",) if first_records else ()),
        "first_records": first_records,
    }
    if request.htmx:
        return render(request, "jobs/_job_status.html", context)
    if request.can["run"] and has_model(job):
        context["posttrain_form"] = posttrain_form(project)
    return render(request, "jobs/job_detail.html", context)


@project_page()
def job_artifact(
    request: ProjectRequest, project: Project, job_id: int, artifact_id: int
) -> HttpResponse:
    """An artifact's bytes, streamed from the object store (sample grids, reports, weights)."""
    artifact = job_artifact_of(_job(project, job_id), artifact_id)
    if artifact is None:
        raise Http404(f"artifact {artifact_id} not found in job {job_id}")
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
def job_resume_view(request: ProjectRequest, project: Project, job_id: int) -> HttpResponse:
    job = _job(project, job_id)
    checkpoint_id = request.POST.get("checkpoint_id", "")
    # Not a number ("abc", "²"): no checkpoint, the same message as an unknown id.
    checkpoint = (
        job_artifact_of(job, int(checkpoint_id), kind=ArtifactKind.CHECKPOINT)
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
    except PolicyDenied as error:
        denied_show(request, error)
    else:
        messages.info(request, f"Job {job.pk} resumes from step {checkpoint.step}.")
    return redirect("job-detail", project_id=project.pk, job_id=job.pk)


@project_page(Action.RUN)
@require_POST
def job_cancel_view(request: ProjectRequest, project: Project, job_id: int) -> HttpResponse:
    job = _job(project, job_id)
    try:
        job_cancel(job=job, actor=request.user)
    except JobError as error:
        messages.error(request, str(error))
    else:
        messages.info(request, f"Cancel requested for job {job.pk}.")
    return redirect("job-detail", project_id=project.pk, job_id=job.pk)


def posttrain_form(project: Project, data=None) -> PostTrainJobForm:
    return PostTrainJobForm(
        data,
        versions=pair_versions_for(project),
        reward_jobs=reward_jobs_for(project),
    )


@project_page(Action.RUN)
def job_posttrain(request: ProjectRequest, project: Project, job_id: int) -> HttpResponse:
    """Post-train a job's model: sft, lora, qlora, reward, dpo or ppo.

    The form sits on the page of a succeeded job that published a model and posts here;
    it is validated through the same path as the API (job_create), and a bad request shows
    the form again, on a page of its own, with the platform's messages on its fields.
    """
    base = _job(project, job_id)
    form = posttrain_form(project, request.POST if request.method == "POST" else None)
    started = (
        request.method == "POST"
        and form.is_valid()
        and job_started(
            request,
            project,
            kind=form.cleaned_data["kind"],
            params=form.job_params(base.pk),
            experiment=form.cleaned_data["experiment"] or "",
            show_errors=form.add_job_errors,
            note=f" from job {base.pk}",
        )
    )
    if started:
        return started
    return render(
        request,
        "jobs/posttrain_start.html",
        {"project": project, "base": base, "posttrain_form": form},
    )


@project_page()
def experiment_compare(request: ProjectRequest, project: Project) -> HttpResponse:
    """Runs grouped by experiment name, their curves overlaid on shared axes."""
    chosen_name = page_text_param(request, "experiment") or ""
    candidates = runs_with_metrics(project, experiment=chosen_name)
    # isascii too: "²".isdigit() is True but int("²") raises.
    wanted = {int(i) for i in request.GET.getlist("jobs") if i.isascii() and i.isdigit()}
    compared = [job for job in candidates if job.pk in wanted] or candidates[:MAX_COMPARED]
    compared = compared[:MAX_COMPARED]
    context = {
        "project": project,
        "experiments": experiments_of(project),
        "chosen_name": chosen_name,
        "candidates": candidates,
        "compared_ids": {job.pk for job in compared},
        "charts": charts_for(compared),
    }
    return render(request, "jobs/experiments.html", context)
