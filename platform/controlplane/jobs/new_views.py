"""The "New job" pages: the one entry point that starts a job of any kind from the browser.

    /projects/<id>/jobs/new/          the kinds a member can start, grouped by stage
    /projects/<id>/jobs/new/<kind>/   the kind's form (jobs/forms.py: every API field)

A form is submitted through `job_started`, the service path the API and the contextual
forms (a dataset version's pipeline and training forms, a model's post-training form) use,
so the policy, the GPU quota, the budget and the audit trail apply alike. Only engineers
and owners see or post these pages (a viewer gets 403, an outsider 404).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import Http404, HttpResponse
from django.shortcuts import render

from controlplane.dashboard.access import ProjectRequest, project_page
from controlplane.jobs.forms import NewJobForm
from controlplane.jobs.views import job_started
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from workers.protocol import JobKind


@dataclass(frozen=True)
class StartableKind:
    kind: JobKind
    stage: str
    summary: str
    needs: str  # what must exist first, said plainly


# Every kind a member can start, in the order a project goes through them. The erasure job
# is not here: only an approved erasure request starts one (controlplane/gdpr/erasure.py).
STARTABLE = (
    StartableKind(JobKind.INSPECT, "Data", "Preview an upload's first records.", "an upload"),
    StartableKind(
        JobKind.DATA_PIPELINE,
        "Data",
        "Clean, deduplicate, filter and tokenize text into a new dataset version.",
        "a ready text dataset version",
    ),
    StartableKind(
        JobKind.PRETRAIN,
        "Pre-training",
        "Train a GPT from scratch on tokenized text.",
        "a dataset version the pipeline tokenized",
    ),
    StartableKind(
        JobKind.DIFFUSION, "Images", "A diffusion model (DDPM/DDIM) on the 8x8 digits.", ""
    ),
    StartableKind(JobKind.GAN, "Images", "A conditional DCGAN on the 8x8 digits.", ""),
    StartableKind(JobKind.VAE, "Images", "A variational autoencoder on the 8x8 digits.", ""),
    StartableKind(
        JobKind.SFT,
        "Post-training",
        "Supervised fine-tuning of all weights on prompt/response pairs.",
        "a succeeded job that published a model",
    ),
    StartableKind(
        JobKind.LORA,
        "Post-training",
        "Low-rank adapters on prompt/response pairs.",
        "a succeeded job that published a model",
    ),
    StartableKind(
        JobKind.QLORA,
        "Post-training",
        "Adapters on a 4-bit (NF4) base.",
        "a succeeded job that published a model",
    ),
    StartableKind(
        JobKind.REWARD,
        "Post-training",
        "A reward model on prompt/chosen/rejected pairs.",
        "a succeeded job that published a model",
    ),
    StartableKind(
        JobKind.DPO,
        "Post-training",
        "Direct preference optimisation on prompt/chosen/rejected pairs.",
        "a succeeded job that published a model",
    ),
    StartableKind(
        JobKind.PPO,
        "Post-training",
        "RLHF against a reward model.",
        "a model and a succeeded reward job",
    ),
    StartableKind(
        JobKind.EVALUATE,
        "Evaluation",
        "Score a registered model version: loss, samples, memorisation.",
        "a ready model version",
    ),
)
_BY_KIND = {entry.kind.value: entry for entry in STARTABLE}


@project_page(Action.RUN)
def job_new(request: ProjectRequest, project: Project) -> HttpResponse:
    """The kinds of job a member can start, each linking to its form."""
    stages: dict[str, list[StartableKind]] = {}
    for entry in STARTABLE:
        stages.setdefault(entry.stage, []).append(entry)
    return render(request, "jobs/new_job.html", {"project": project, "stages": stages})


@project_page(Action.RUN)
def job_new_kind(request: ProjectRequest, project: Project, kind: str) -> HttpResponse:
    """A kind's form; a request the platform refuses shows the form again with the
    reasons on its fields (or the policy's banner above it)."""
    entry = _BY_KIND.get(kind)
    if entry is None:
        raise Http404(f"no job kind '{kind}' to start here")
    form = NewJobForm(
        request.POST if request.method == "POST" else None, kind=entry.kind, project=project
    )
    if request.method == "POST" and form.is_valid():
        started = job_started(
            request,
            project,
            kind=entry.kind,
            params=form.job_params(),
            experiment=form.cleaned_data["experiment"] or "",
            show_errors=form.add_job_errors,
        )
        if started:
            return started
    return render(
        request, "jobs/new_job_form.html", {"project": project, "entry": entry, "form": form}
    )
