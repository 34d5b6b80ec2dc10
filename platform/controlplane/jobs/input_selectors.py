"""What a new job can read, per kind of input: the project's rows a "New job" form offers
(jobs/forms.py). Reads only; the API's validation (kinds.py, posttrain.py, evaluate.py)
decides whether a chosen row will do, so an offer here is a convenience, never a check."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from controlplane.jobs.models import ArtifactKind, Job, JobState
from controlplane.jobs.posttrain import MODEL_FILES
from controlplane.projects.models import Project


def uploads_newest_first(project: Project) -> QuerySet:
    from controlplane.uploads.models import Upload

    return Upload.objects.filter(project=project).order_by("-id")


def ready_versions(project: Project) -> QuerySet:
    from controlplane.datasets.models import DatasetVersion, VersionState

    return (
        DatasetVersion.objects.filter(dataset__project=project, state=VersionState.READY)
        .select_related("dataset")
        .order_by("dataset__slug", "-number")
    )


def ready_text_versions(project: Project) -> QuerySet:
    """What the data pipeline cleans."""
    return ready_versions(project).filter(dataset__kind="text")


def token_shard_versions(project: Project) -> QuerySet:
    """Text versions the data pipeline tokenized (tokens/*.bin): what pre-training reads
    and a text model is evaluated on."""
    from controlplane.datasets.models import FileRole

    return (
        ready_text_versions(project)
        .filter(files__role=FileRole.SHARD, files__name__startswith="tokens/")
        .distinct()
    )


def model_jobs_for(project: Project) -> QuerySet[Job]:
    """Succeeded jobs of the project that published a whole model (what post-training
    starts from), newest first, in one query."""
    return (
        Job.objects.filter(project=project, state=JobState.SUCCEEDED)
        .annotate(
            model_files=Count(
                "artifacts__name",
                filter=Q(artifacts__kind=ArtifactKind.OUTPUT, artifacts__name__in=MODEL_FILES),
                distinct=True,
            )
        )
        .filter(model_files=len(MODEL_FILES))
        .order_by("-id")
    )


def ready_model_versions(project: Project) -> QuerySet:
    """Registered versions an evaluation can score."""
    from controlplane.registry.models import ModelVersion, VersionState

    return (
        ModelVersion.objects.filter(model__project=project, state=VersionState.READY)
        .select_related("model")
        .order_by("model__name", "-number")
    )
