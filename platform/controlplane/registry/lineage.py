"""What a version records of its job: the model files, the figures and the lineage."""

from __future__ import annotations

from typing import Any

from controlplane.registry.errors import InvalidRequest
from controlplane.registry.models import FileRole
from controlplane.registry.rules import VISION_KINDS, finite_number

# What a text model's job publishes under model/, and the role of each file.
TEXT_MODEL_FILES = {
    "model.safetensors": FileRole.WEIGHTS,
    "config.json": FileRole.CONFIG,
    "tokenizer.json": FileRole.TOKENIZER,
}
CHECKPOINT_NAME = "checkpoint.pt"  # a vision version's one file


def flat_figures(result: Any) -> dict[str, float]:
    """A job result's numbers, flat: top-level and `metrics` figures by their own name,
    other sections' as `section.name` (two levels); lists (files, samples) and text are
    left out."""
    figures: dict[str, float] = {}
    if not isinstance(result, dict):
        return figures

    def add(name: str, value: Any) -> None:
        number = finite_number(value)
        if number is not None:
            figures.setdefault(name[:100], number)

    for key, value in result.items():
        if not isinstance(value, dict):
            add(str(key), value)
            continue
        for name, item in value.items():
            prefix = "" if key == "metrics" else f"{key}."
            if isinstance(item, dict):
                for inner, number in item.items():
                    add(f"{prefix}{name}.{inner}", number)
            else:
                add(f"{prefix}{name}", item)
    return figures


def _published(job, prefix: str) -> dict[str, Any]:
    """The latest upload of each output artifact under `prefix`, by name."""
    from controlplane.jobs.models import ArtifactKind

    latest: dict[str, Any] = {}
    for artifact in job.artifacts.filter(kind=ArtifactKind.OUTPUT, name__startswith=prefix):
        if artifact.name not in latest or artifact.pk > latest[artifact.name].pk:
            latest[artifact.name] = artifact
    return latest


def model_files_of(job) -> list[tuple[str, str, Any]]:
    """[(file name in the version, role, JobArtifact)]; InvalidRequest when there is no model."""
    from controlplane.jobs.models import ArtifactKind

    if job.kind in VISION_KINDS:
        checkpoint = (
            job.artifacts.filter(kind=ArtifactKind.CHECKPOINT, name__endswith=".pt")
            .order_by("-step", "-id")
            .first()
        )
        if checkpoint is None:
            raise InvalidRequest(
                f"job {job.pk} ({job.kind}) has no checkpoint (.pt) to register as its model"
            )
        return [(CHECKPOINT_NAME, FileRole.CHECKPOINT, checkpoint)]
    published = _published(job, "model/")
    missing = [name for name in TEXT_MODEL_FILES if f"model/{name}" not in published]
    if missing:
        raise InvalidRequest(
            f"job {job.pk} ({job.kind}) published no model "
            f"({', '.join('model/' + m for m in missing)} missing)"
        )
    return [
        (name, TEXT_MODEL_FILES.get(name, FileRole.OTHER), artifact)
        for full, artifact in sorted(published.items())
        if (name := full.removeprefix("model/")) and "/" not in name
    ]


def job_id_of(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def lineage_of(job) -> tuple[list, list, dict[str, Any]]:
    """(jobs, dataset versions, graph) behind a job, transitively.

    Follows base_job_id / reward_job_id / dataset_version_id of each job, and each
    dataset version's parents and producing (pipeline) job. Edges point from what was
    used to what was made. Bounded: a corrupt cycle or a huge history cannot hang it.
    """
    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job

    jobs: dict[int, Job] = {}
    versions: dict[int, DatasetVersion] = {}
    edges: set[tuple[str, str]] = set()
    job_queue: list[int] = [job.pk]
    version_queue: list[int] = []
    jobs_seen, versions_seen = {job.pk}, set()
    limit = 2000
    while (job_queue or version_queue) and len(jobs) + len(versions) < limit:
        if job_queue:
            ids = job_queue
            job_queue = []
            for item in Job.objects.filter(pk__in=ids, project_id=job.project_id):
                jobs[item.pk] = item
                params = item.params if isinstance(item.params, dict) else {}
                for field in ("base_job_id", "reward_job_id"):
                    used = job_id_of(params.get(field))
                    if used is not None:
                        edges.add((f"job:{used}", f"job:{item.pk}"))
                        if used not in jobs_seen:
                            jobs_seen.add(used)
                            job_queue.append(used)
                used_version = job_id_of(params.get("dataset_version_id"))
                if used_version is not None:
                    edges.add((f"dv:{used_version}", f"job:{item.pk}"))
                    if used_version not in versions_seen:
                        versions_seen.add(used_version)
                        version_queue.append(used_version)
            continue
        ids = version_queue
        version_queue = []
        found = (
            DatasetVersion.objects.filter(pk__in=ids, dataset__project_id=job.project_id)
            .select_related("dataset")
            .prefetch_related("parents")
        )
        for version in found:
            versions[version.pk] = version
            for parent in version.parents.all():
                edges.add((f"dv:{parent.pk}", f"dv:{version.pk}"))
                if parent.pk not in versions_seen:
                    versions_seen.add(parent.pk)
                    version_queue.append(parent.pk)
            if version.produced_by_id is not None:
                edges.add((f"job:{version.produced_by_id}", f"dv:{version.pk}"))
                if version.produced_by_id not in jobs_seen:
                    jobs_seen.add(version.produced_by_id)
                    job_queue.append(version.produced_by_id)
    nodes = [
        {
            "id": f"job:{item.pk}",
            "type": "job",
            "kind": item.kind,
            "label": f"{item.kind} job {item.pk}",
        }
        for item in sorted(jobs.values(), key=lambda j: j.pk)
    ] + [
        {
            "id": f"dv:{version.pk}",
            "type": "dataset_version",
            "dataset": version.dataset.slug,
            "number": version.number,
            "license": version.dataset.license,
            "source": version.dataset.source,
            "label": f"{version.dataset.slug} v{version.number}",
        }
        for version in sorted(versions.values(), key=lambda v: v.pk)
    ]
    known = {node["id"] for node in nodes}
    graph = {
        "nodes": nodes,
        "edges": sorted([a, b] for a, b in edges if a in known and b in known),
    }
    return (
        sorted(jobs.values(), key=lambda j: j.pk),
        sorted(versions.values(), key=lambda v: v.pk),
        graph,
    )
