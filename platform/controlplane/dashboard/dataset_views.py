"""Dataset pages: list and create, a dataset with its versions, one version's manifest.

The browser uploads a new version with static/js/dataset-upload.js through the same REST
calls an API client makes (presigned multipart, then "complete"), so the bytes go straight
to the object store in parts and never whole through the web process.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render

from controlplane.audit.selectors import audit_events_for
from controlplane.dashboard.access import project_page
from controlplane.dashboard.forms import DatasetForm
from controlplane.datasets.models import Dataset
from controlplane.datasets.selectors import datasets_for, versions_of
from controlplane.datasets.services import DatasetError, dataset_create


@project_page()
def dataset_list(request, project):
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
        "dashboard/dataset_list.html",
        {"project": project, "datasets": datasets_for(project), "form": form},
    )


def _dataset(project, dataset_id: int) -> Dataset:
    dataset = (
        Dataset.objects.filter(project=project, pk=dataset_id).select_related("created_by").first()
    )
    if dataset is None:
        raise Http404(f"dataset {dataset_id} not found in this project")
    return dataset


@project_page()
def dataset_detail(request, project, dataset_id: int):
    dataset = _dataset(project, dataset_id)
    return render(
        request,
        "dashboard/dataset_detail.html",
        {"project": project, "dataset": dataset, "versions": versions_of(dataset)[:50]},
    )


@project_page()
def dataset_version(request, project, dataset_id: int, number: int):
    dataset = _dataset(project, dataset_id)
    version = versions_of(dataset).filter(number=number).first()
    if version is None:
        raise Http404(f"version {number} of {dataset.slug} not found")
    history = audit_events_for(project, artifact_type="datasetversion", artifact_id=str(version.pk))
    return render(
        request,
        "dashboard/dataset_version.html",
        {"project": project, "dataset": dataset, "version": version, "history": history[:50]},
    )


__all__ = ["dataset_detail", "dataset_list", "dataset_version"]
