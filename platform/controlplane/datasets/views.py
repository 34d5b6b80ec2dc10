"""Dataset pages: list and create, a dataset with its versions, one version's manifest.

The browser uploads a new version with static/js/dataset-upload.js through the same REST
calls an API client makes (presigned multipart, then "complete"), so the bytes go straight
to the object store in parts and never whole through the web process.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render

from controlplane.audit.selectors import audit_events_for
from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.dashboard.forms import PipelineJobForm, TrainJobForm
from controlplane.datasets.forms import DatasetEditForm, DatasetForm
from controlplane.datasets.lineage import dataset_lineage
from controlplane.datasets.models import Dataset, DatasetVersion
from controlplane.datasets.selectors import (
    dataset_in,
    datasets_for,
    version_has_token_shards,
    version_is_raw,
    version_numbered,
    versions_of,
)
from controlplane.datasets.services import (
    EDITABLE_FIELDS,
    DatasetError,
    dataset_create,
    dataset_update,
)
from controlplane.engine_tools import pipeline_defaults
from controlplane.jobs.views import job_started
from controlplane.policies.models import SubjectType
from controlplane.policies.pages import gate_warning, violations_banner
from controlplane.policies.plans import upload_facts
from controlplane.policies.rules import Gate
from controlplane.projects.models import Project
from workers.protocol import JobKind


@project_page()
def dataset_list(request: ProjectRequest, project: Project) -> HttpResponse:
    form = DatasetForm(request.POST or None)
    if request.method == "POST":
        if not request.can["run"]:
            raise Http404("only engineers and owners create datasets")
        if form.is_valid():
            try:
                dataset = dataset_create(project=project, actor=request.user, **form.cleaned_data)
            except DatasetError as error:
                form.add_error("slug", str(error))
            else:
                messages.success(
                    request, f"Dataset {dataset.name} created: upload its first version."
                )
                return redirect("dataset-detail", project_id=project.pk, dataset_id=dataset.pk)
    return render(
        request,
        "datasets/dataset_list.html",
        {"project": project, "datasets": datasets_for(project), "form": form},
    )


def _dataset(project: Project, dataset_id: int) -> Dataset:
    return found_or_404(
        dataset_in(project, dataset_id), f"dataset {dataset_id} not found in this project"
    )


@project_page()
def dataset_detail(request: ProjectRequest, project: Project, dataset_id: int) -> HttpResponse:
    """The dataset, its versions and lineage; engineers and owners edit its description here."""
    dataset = _dataset(project, dataset_id)
    posted = request.POST if request.method == "POST" else None
    edit_form = DatasetEditForm(
        posted, initial={name: getattr(dataset, name) for name in EDITABLE_FIELDS}
    )
    if posted is not None:
        if not request.can["run"]:
            raise PermissionDenied("only engineers and owners edit datasets")
        if _edited(request, dataset, edit_form):
            messages.success(request, f"Dataset {dataset.name} saved.")
            return redirect("dataset-detail", project_id=project.pk, dataset_id=dataset.pk)
    return render(
        request,
        "datasets/dataset_detail.html",
        {
            "project": project,
            "dataset": dataset,
            "versions": versions_of(dataset)[:50],
            "lineage": dataset_lineage(dataset),
            "edit_form": edit_form,
            # What the policy would say to an upload now: shown above the upload form, so
            # nobody hashes gigabytes only to be refused.
            "upload_denied": (
                gate_warning(project, Gate.DATASET_UPLOAD, lambda: upload_facts(dataset))
                if request.can["run"]
                else None
            ),
        },
    )


def _edited(request: ProjectRequest, dataset: Dataset, form: DatasetEditForm) -> bool:
    """Whether the form's changes were saved; if not, the reasons are on the form."""
    if not form.is_valid():
        return False
    try:
        dataset_update(dataset=dataset, actor=request.user, **form.cleaned_data)
    except DatasetError as error:
        for name, problems in (error.fields or {None: [str(error)]}).items():
            for problem in problems:
                form.add_error(name if name in form.fields else None, problem)
        return False
    return True


@project_page()
def dataset_version(
    request: ProjectRequest, project: Project, dataset_id: int, number: int
) -> HttpResponse:
    """A version's manifest, report and history; its forms start a pipeline or a training."""
    dataset = _dataset(project, dataset_id)
    version = found_or_404(
        version_numbered(dataset, number), f"version {number} of {dataset.slug} not found"
    )
    posted = request.POST if request.method == "POST" else None
    action = (posted or {}).get("action")
    form = PipelineJobForm(
        posted if action == "pipeline" else None, initial={"pipeline": _default_pipeline_json()}
    )
    train_form = TrainJobForm(posted if action == "train" else None)
    if posted is not None:
        if not request.can["run"]:
            raise Http404("only engineers and owners run jobs")
        chosen = form if action == "pipeline" else train_form
        kind = JobKind.DATA_PIPELINE if action == "pipeline" else JobKind.PRETRAIN
        started = _job_started(request, project, version, chosen, kind)
        if started:
            return started
    history = audit_events_for(project, artifact_type="datasetversion", artifact_id=str(version.pk))
    context = {
        "project": project,
        "dataset": dataset,
        "version": version,
        "history": history[:50],
        "form": form,
        "train_form": train_form,
        "has_shards": version_has_token_shards(version),
        "is_raw": version_is_raw(version),
        "report_rows": _report_rows(version.report),
        "violations": violations_banner(project, SubjectType.DATASET_VERSION, version.pk),
    }
    return render(request, "datasets/dataset_version.html", context)


def _job_started(
    request: ProjectRequest,
    project: Project,
    version: DatasetVersion,
    form: forms.Form,
    kind: JobKind,
) -> HttpResponse | None:
    """Start the form's job on the version: the redirect to it, or None with the reasons
    on the form."""
    if not form.is_valid():
        return None
    return job_started(
        request,
        project,
        kind=kind,
        params=form.job_params(version.pk),
        experiment=form.cleaned_data.get("experiment", "") if kind == JobKind.PRETRAIN else "",
        show_errors=lambda errors: _show_job_errors(form, errors),
    )


def _show_job_errors(form: forms.Form, errors: dict[str, list[str]]) -> None:
    """The platform's field errors ("params.pipeline") on the form's own fields."""
    for field, problems in errors.items():
        name = field.removeprefix("params.").rsplit(".", 1)[-1]
        for problem in problems:
            if name in form.fields:
                form.add_error(name, problem)
            else:
                form.add_error(None, f"{name}: {problem}")


def _default_pipeline_json() -> str:
    return json.dumps({"stages": pipeline_defaults()["stages"]}, indent=1)


def _report_rows(report: dict | None) -> list[dict]:
    """One row per stage with its share of the input removed, for the table and bar chart."""
    if not report:
        return []
    read = max(report.get("records_read", 0), 1)
    rows = []
    for name, stats in report.get("stages", {}).items():
        removed = stats.get("removed_total", 0)
        rows.append(
            {
                "name": name,
                "removed": removed,
                "changed": stats.get("changed", 0),
                "reasons": stats.get("removed", {}),
                "percent": round(100 * removed / read, 1),
            }
        )
    return rows


__all__ = ["dataset_detail", "dataset_list", "dataset_version"]
