from __future__ import annotations

from django.db.models import Count, Prefetch, QuerySet

from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion
from controlplane.projects.models import Project


def datasets_for(project: Project, *, kind: str | None = None) -> QuerySet[Dataset]:
    datasets = Dataset.objects.filter(project=project).select_related("created_by")
    if kind:
        datasets = datasets.filter(kind=kind)
    return datasets.annotate(version_count=Count("versions")).order_by("name", "id")


def versions_of(dataset: Dataset) -> QuerySet[DatasetVersion]:
    return (
        DatasetVersion.objects.filter(dataset=dataset)
        .select_related("created_by", "dataset")
        .prefetch_related(
            Prefetch("files", queryset=DatasetFile.objects.order_by("name", "id")), "parents"
        )
        .order_by("-number")
    )
