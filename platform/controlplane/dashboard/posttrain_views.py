"""Post-train a job's model from its page: sft, lora, qlora, reward, dpo or ppo.

The form sits on the page of a succeeded job that published a model and posts here; this
view validates it through the same path as the API (job_create), and on a bad request
shows the form again, on a page of its own, with the platform's messages on its fields.
"""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render

from controlplane.dashboard.access import project_page
from controlplane.dashboard.forms import PostTrainJobForm
from controlplane.jobs.kinds import JobRequestError
from controlplane.jobs.models import Job
from controlplane.jobs.posttrain import pair_versions_for, reward_jobs_for
from controlplane.jobs.services import job_create
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action


def posttrain_form(project: Project, data=None) -> PostTrainJobForm:
    return PostTrainJobForm(
        data,
        versions=pair_versions_for(project),
        reward_jobs=reward_jobs_for(project),
    )


@project_page(Action.RUN)
def job_posttrain(request, project, job_id: int):
    base = get_object_or_404(Job, project=project, pk=job_id)
    form = posttrain_form(project, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            job = job_create(
                project=project,
                kind=form.cleaned_data["kind"],
                actor=request.user,
                params=form.job_params(base.pk),
                experiment=form.cleaned_data["experiment"] or "",
            )
        except JobRequestError as error:
            form.add_job_errors(error.errors)
        else:
            messages.success(request, f"Job {job.pk} ({job.kind}) queued from job {base.pk}.")
            return redirect("job-detail", project_id=project.pk, job_id=job.pk)
    return render(
        request,
        "dashboard/posttrain_start.html",
        {"project": project, "base": base, "posttrain_form": form},
    )
