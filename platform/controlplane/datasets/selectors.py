from __future__ import annotations

from django.db.models import Count, Prefetch, QuerySet

from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion, FileRole
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


def dataset_in(project: Project, dataset_id: int) -> Dataset | None:
    """The dataset, or None when it is not one of this project's."""
    return (
        Dataset.objects.filter(project=project, pk=dataset_id)
        .select_related("project", "created_by")
        .first()
    )


def version_numbered(dataset: Dataset, number: int) -> DatasetVersion | None:
    return versions_of(dataset).filter(number=number).first()


def version_has_token_shards(version: DatasetVersion) -> bool:
    """Whether a pipeline tokenized the version (tokens/*.bin): what pre-training reads."""
    return version.files.filter(role=FileRole.SHARD, name__startswith="tokens/").exists()


def version_is_raw(version: DatasetVersion) -> bool:
    """Whether the version holds raw data (uploaded, or an upload rewritten by an erasure)
    rather than a pipeline's output (which has a manifest): what the pipeline cleans."""
    return not version.files.filter(role=FileRole.MANIFEST).exists()


def version_file_ids(version: DatasetVersion) -> set[int]:
    return set(version.files.values_list("pk", flat=True))


def version_exists(version: DatasetVersion) -> bool:
    """Still there (the reaper removes an expired upload's version with its files)."""
    return DatasetVersion.objects.filter(pk=version.pk).exists()
