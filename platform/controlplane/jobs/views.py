"""Pages of the jobs app: the job list, a job's page (and the status fragment htmx polls),
its artifacts, cancel, resume and post-train, and the experiments compare page.

The compare page is a jobs page: an experiment is a name on a Job (no model of its own),
and the page reads only job selectors (runs and their metric series).
"""

from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.contrib import messages
from django.core.exceptions import BadRequest
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from controlplane.api.params import page_text_param
from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.dashboard.forms import PostTrainJobForm
from controlplane.finops.selectors import job_usage
from controlplane.jobs import page_events, page_selectors
from controlplane.jobs.models import ArtifactKind, Job, JobState
from controlplane.jobs.posttrain import has_model, pair_versions_for, reward_jobs_for
from controlplane.jobs.requests import JobRequestError
from controlplane.jobs.runs import job_rows_for, run_table, runs_with_metrics
from controlplane.jobs.selectors import (
    charts_for,
    checkpoints_with_losses,
    experiments_of,
    job_artifact_of,
    job_event_health,
    job_in,
    job_outputs,
    job_sample_grid,
)
from controlplane.jobs.services import JobError, job_cancel, job_create, job_resume
from controlplane.policies.errors import PolicyDenied
from controlplane.policies.pages import denied_show
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.storage import object_store
from workers.protocol import JobKind

MAX_COMPARED = 8  # curves on one compare chart stay readable up to about this many runs
RUNS_LISTED = 50  # the experiments table lists the newest this many runs
DEFAULT_COMPARED = 3  # ticked when none is chosen: the newest few, not a tangle of curves
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
    except JobError as error:  # a spent budget or a GPU quota of 0 (finops)
        messages.error(request, str(error))
        return None
    except PolicyDenied as error:
        # The banner above the form (or on the page a caller redirects to) names each
        # rule that said no, why, how to fix it, and links to the rule.
        denied_show(request, error)
        return None
    messages.success(request, f"Job {job.pk} ({job.kind}) queued{note}.")
    return redirect("job-detail", project_id=project.pk, job_id=job.pk)


class JobFilterForm(forms.Form):
    """The jobs list's filters; a value that is not one of the choices is ignored."""

    kind = forms.ChoiceField(required=False)
    state = forms.ChoiceField(required=False, choices=[("", "any state"), *JobState.choices])
    experiment = forms.ChoiceField(required=False)

    def __init__(self, data, *, experiments: list[str]):
        super().__init__(data)
        self.fields["kind"].choices = [("", "any kind")] + [(k, k) for k in JobKind]
        self.fields["experiment"].choices = [("", "any experiment")] + [
            (name, name) for name in experiments
        ]

    def chosen(self) -> dict[str, str | None]:
        if not self.is_valid():
            # Keep what is valid: ?state=nonsense still filters by the kind given.
            return {name: self.cleaned_data.get(name) or None for name in self.fields}
        return {name: value or None for name, value in self.cleaned_data.items()}


@project_page()
@require_safe
def job_list(request: ProjectRequest, project: Project) -> HttpResponse:
    """The project's jobs, filtered by kind, state and experiment (htmx polls the rows)."""
    experiments = [row["experiment"] for row in experiments_of(project)]
    filters = JobFilterForm(request.GET, experiments=experiments)
    chosen = filters.chosen()
    page = Paginator(job_rows_for(project, **chosen), 25).get_page(request.GET.get("page"))
    context = {
        "project": project,
        "page": page,
        "jobs": page.object_list,
        "filters": filters,
        "filtered": any(chosen.values()),
    }
    if request.htmx:
        return render(request, "jobs/_job_rows.html", context)
    return render(request, "jobs/job_list.html", context)


def _events_context(request: ProjectRequest, job: Job) -> dict:
    event_type = request.GET.get("event_type") or ""
    types = page_events.event_types(job)
    if event_type not in types:
        event_type = ""
    events = page_events.events_page(
        job, event_type=event_type, page=request.GET.get("events_page")
    )
    rows = page_events.event_rows(list(events.object_list))
    # New events are polled for on the first page of the unfiltered list of a running job.
    live = not job.is_terminal and not event_type and events.number == 1
    return {
        "event_type": event_type,
        "event_types": types,
        "events": events,
        "event_rows": rows,
        "live_events": live,
        "last_event_id": rows[0].record.pk if rows else 0,
    }


def _page_context(request: ProjectRequest, project: Project, job: Job) -> dict:
    charts, constants = page_selectors.job_page_charts(job)
    return {
        "project": project,
        "job": job,
        "timing": page_selectors.job_timing(job),
        "params": page_selectors.param_items(job, project),
        "samples": page_selectors.text_samples(job),
        "comparison": page_selectors.posttrain_comparison(job),
        "result_rows": page_selectors.result_rows(job),
        "result_summary": page_selectors.result_summary(job),
        "result_json": page_selectors.result_json(job) if job.result else "",
        "first_records": page_selectors.first_records(job),
        "produced": page_selectors.produced_versions(job),
        "charts": charts,
        "constants": constants,
        "metrics_expected": job.kind in page_selectors.METRIC_KINDS and not job.is_terminal,
        "artifacts": job_outputs(job),
        "grid": job_sample_grid(job),
        "checkpoints": checkpoints_with_losses(job),
        "event_health": job_event_health(job),
        "usage": job_usage(job),
        **_events_context(request, job),
    }


def _count_param(request: ProjectRequest, name: str) -> int:
    """A count or id the page's poller sent back; not a number is a bad request."""
    raw = request.GET.get(name, "")
    # isascii too: "²".isdigit() is True but int("²") raises.
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"{name} must be a whole number")
    return int(raw)


def _job_part(request: ProjectRequest, project: Project, job: Job, part: str) -> HttpResponse:
    """One polled part of a running job's page, or 204 (htmx then swaps nothing) when it
    has not changed: the page is never re-rendered whole while it is watched."""
    context = {"project": project, "job": job}
    if part == "header":
        response = render(
            request, "jobs/_job_header.html", {**context, "timing": page_selectors.job_timing(job)}
        )
        if job.is_terminal:
            # Ended since the page was drawn: reload it once, with the results and outputs.
            response["HX-Refresh"] = "true"
        return response
    if part == "events":
        after = _count_param(request, "after")
        rows = page_events.event_rows(page_events.events_after(job, after))
        if not rows and not job.is_terminal:
            return HttpResponse(status=204)
        return render(
            request,
            "jobs/_job_event_part.html",
            {
                **context,
                "rows": rows,
                "live_events": not job.is_terminal,
                "last_event_id": rows[0].record.pk if rows else after,
            },
        )
    if part == "checkpoints":
        checkpoints = checkpoints_with_losses(job)
        if len(checkpoints) == _count_param(request, "have") and not job.is_terminal:
            return HttpResponse(status=204)
        return render(
            request, "jobs/_job_checkpoints.html", {**context, "checkpoints": checkpoints}
        )
    if part == "usage":
        return render(request, "jobs/_job_usage_live.html", {**context, "usage": job_usage(job)})
    raise BadRequest(f"unknown part {part!r}; use header, events, checkpoints or usage")


@project_page()
def job_detail(request: ProjectRequest, project: Project, job_id: int) -> HttpResponse:
    """A job's page. While the job runs, htmx polls its parts (`?part=header` ...) and
    charts.js its charts' data (job_charts_data): only what changes is sent again."""
    job = _job(project, job_id)
    part = request.GET.get("part")
    if part:
        return _job_part(request, project, job, part)
    context = _page_context(request, project, job)
    if request.can["run"] and has_model(job):
        context["posttrain_form"] = posttrain_form(project)
    return render(request, "jobs/job_detail.html", context)


@project_page()
def job_charts_data(request: ProjectRequest, project: Project, job_id: int) -> JsonResponse:
    """The job page's charts as JSON, polled by static/js/charts.js while the job runs."""
    job = _job(project, job_id)
    return JsonResponse(page_selectors.job_page_charts_json(job))


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
    """The runs of an experiment (or all runs) as a table of final metrics and key
    parameters, sortable by any column; the ticked runs' curves overlaid on shared axes."""
    chosen_name = page_text_param(request, "experiment") or ""
    candidates = runs_with_metrics(project, experiment=chosen_name, limit=RUNS_LISTED)
    order = request.GET.get("order")
    table = run_table(
        candidates,
        sort=request.GET.get("sort", ""),
        descending={"asc": False, "desc": True}.get(order or ""),
    )
    # isascii too: "²".isdigit() is True but int("²") raises.
    wanted = {int(i) for i in request.GET.getlist("jobs") if i.isascii() and i.isdigit()}
    compared = [job for job in candidates if job.pk in wanted] or candidates[:DEFAULT_COMPARED]
    compared = compared[:MAX_COMPARED]
    context = {
        "project": project,
        "experiments": experiments_of(project),
        "chosen_name": chosen_name,
        "table": table,
        "compared_ids": {job.pk for job in compared},
        "max_compared": MAX_COMPARED,
        "runs_shown_at_most": RUNS_LISTED,
        "charts": charts_for(compared),
    }
    return render(request, "jobs/experiments.html", context)
