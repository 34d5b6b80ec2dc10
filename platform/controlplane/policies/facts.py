"""Subjects' facts from the database, in bulk: a gate asks for one subject, the scan for
thousands, through the same functions (a fixed number of queries either way).

Lineage is walked in Python over the version -> parent edges of the projects involved
(one query), so a version derived from a derived version still finds the pipeline runs
and the erasure holds of every ancestor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.utils import timezone

from controlplane.policies.models import ErasureHold, SubjectType, Waiver
from controlplane.policies.subjects import (
    DatasetFacts,
    Hold,
    ModelVersionFacts,
    PipelineRun,
    SubjectRef,
)


def version_label(dataset_slug: str, number: int) -> str:
    return f"{dataset_slug} v{number}"


def _pipeline_run(job_id: int, params: dict[str, Any]) -> PipelineRun:
    stages = ((params or {}).get("pipeline") or {}).get("stages") or []
    for stage in stages:
        name, config = (stage, {}) if isinstance(stage, str) else next(iter(stage.items()))
        if name == "pii":
            types = (config or {}).get("types")
            return PipelineRun(job_id, tuple(types) if types else ())
    return PipelineRun(job_id, None)


def dataset_facts(version_ids: Iterable[int]) -> dict[int, DatasetFacts]:
    """{version id: DatasetFacts} for ready (or any) dataset versions."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job

    ids = set(version_ids)
    if not ids:
        return {}
    rows = {
        row["pk"]: row
        for row in DatasetVersion.objects.filter(pk__in=ids).values(
            "pk",
            "number",
            "dataset__slug",
            "dataset__license",
            "dataset__source",
            "dataset__project_id",
            "storage_bucket",
            "storage_region",
        )
    }
    projects = {row["dataset__project_id"] for row in rows.values()}
    edges = DatasetVersion.parents.through.objects.filter(
        from_datasetversion__dataset__project_id__in=projects
    ).values_list("from_datasetversion_id", "to_datasetversion_id")
    parents: dict[int, list[int]] = {}
    for child, parent in edges:
        parents.setdefault(child, []).append(parent)
    lineages = {pk: _ancestry(pk, parents) for pk in rows}
    every = set().union(*lineages.values())
    info = {
        row["pk"]: row
        for row in DatasetVersion.objects.filter(pk__in=every).values(
            "pk",
            "number",
            "dataset__slug",
            "produced_by_id",
            "produced_by__kind",
            "report__residual",
        )
    }
    pipeline_jobs = [
        row["produced_by_id"]
        for row in info.values()
        if row["produced_by__kind"] == "data_pipeline"
    ]
    runs = {
        pk: _pipeline_run(pk, params)
        for pk, params in Job.objects.filter(pk__in=pipeline_jobs).values_list("pk", "params")
    }
    holds: dict[int, list[Hold]] = {}
    for hold in ErasureHold.objects.filter(
        dataset_version_id__in=every, released_at__isnull=True
    ).values("pk", "reference", "dataset_version_id"):
        row = info[hold["dataset_version_id"]]
        holds.setdefault(hold["dataset_version_id"], []).append(
            Hold(hold["pk"], hold["reference"], version_label(row["dataset__slug"], row["number"]))
        )
    facts = {}
    for pk, row in rows.items():
        lineage = lineages[pk]  # nearest first
        label = version_label(row["dataset__slug"], row["number"])
        nearest_report = next(
            (v for v in lineage if info[v]["produced_by__kind"] == "data_pipeline"), None
        )
        facts[pk] = DatasetFacts(
            ref=SubjectRef(SubjectType.DATASET_VERSION, pk, label),
            licence=row["dataset__license"],
            source=row["dataset__source"],
            bucket=row["storage_bucket"],
            region=row["storage_region"],
            pipelines=[
                runs[info[v]["produced_by_id"]]
                for v in lineage
                if info[v]["produced_by_id"] in runs
            ],
            residual=_residual(info[nearest_report]) if nearest_report else None,
            residual_from=(
                version_label(info[nearest_report]["dataset__slug"], info[nearest_report]["number"])
                if nearest_report
                else ""
            ),
            holds=[hold for v in lineage for hold in holds.get(v, ())],
        )
    return facts


def _residual(row: dict[str, Any]) -> dict[str, Any] | None:
    residual = row.get("report__residual")
    return residual if isinstance(residual, dict) else None


def _ancestry(pk: int, parents: dict[int, list[int]]) -> list[int]:
    """pk and its ancestors, breadth first (nearest first), each once."""
    order, seen, frontier = [pk], {pk}, [pk]
    while frontier:
        nxt = []
        for node in frontier:
            for parent in parents.get(node, ()):
                if parent not in seen:
                    seen.add(parent)
                    order.append(parent)
                    nxt.append(parent)
        frontier = nxt
    return order


def model_version_facts(
    version_ids: Iterable[int], *, with_data: bool = True
) -> dict[int, ModelVersionFacts]:
    from controlplane.registry.models import ModelEvaluation, ModelVersion

    ids = set(version_ids)
    if not ids:
        return {}
    rows = ModelVersion.objects.filter(pk__in=ids).values("pk", "number", "model__name")
    latest: dict[int, tuple[int, dict]] = {}
    evaluations = (
        ModelEvaluation.objects.filter(version_id__in=ids, finished_at__isnull=False)
        .order_by("version_id", "-finished_at", "-id")
        .values_list("version_id", "pk", "metrics")
    )
    for version_id, pk, metrics in evaluations:
        latest.setdefault(version_id, (pk, metrics if isinstance(metrics, dict) else {}))
    trained_on: dict[int, list[int]] = {}
    if with_data:
        for version_id, dataset_version_id in ModelVersion.dataset_versions.through.objects.filter(
            modelversion_id__in=ids
        ).values_list("modelversion_id", "datasetversion_id"):
            trained_on.setdefault(version_id, []).append(dataset_version_id)
    data = dataset_facts({d for ds in trained_on.values() for d in ds}) if with_data else {}
    facts = {}
    for row in rows:
        evaluation_id, metrics = latest.get(row["pk"], (None, {}))
        facts[row["pk"]] = ModelVersionFacts(
            ref=SubjectRef(
                SubjectType.MODEL_VERSION, row["pk"], f"{row['model__name']} v{row['number']}"
            ),
            evaluation_id=evaluation_id,
            metrics=metrics,
            datasets=[data[d] for d in trained_on.get(row["pk"], ()) if d in data],
        )
    return facts


def active_waivers(
    keys: Iterable[tuple[str, str, int | None]], *, project_ids: Iterable[int] | None = None
) -> dict[tuple[str, str, int], int]:
    """{(rule, subject type, subject id): waiver id} for the unexpired, unrevoked waivers
    among `keys` (one query)."""
    wanted = {key for key in keys if key[2] is not None}
    if not wanted:
        return {}
    rows = Waiver.objects.filter(
        revoked_at__isnull=True,
        expires_at__gt=timezone.now(),
        subject_id__in={key[2] for key in wanted},
        rule__in={key[0] for key in wanted},
    )
    if project_ids is not None:
        rows = rows.filter(project_id__in=set(project_ids))
    found = {}
    for pk, rule, subject_type, subject_id in rows.order_by("pk").values_list(
        "pk", "rule", "subject_type", "subject_id"
    ):
        if (rule, subject_type, subject_id) in wanted:
            found[(rule, subject_type, subject_id)] = pk
    return found
