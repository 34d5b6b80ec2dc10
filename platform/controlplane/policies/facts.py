"""Subjects' facts from the database, in bulk: a gate asks for one subject, the scan for
thousands, through the same functions (a fixed number of queries either way).

Lineage is walked in the database (a recursive query over the version -> parent edges,
`_lineages`), so a version derived from a derived version still finds the pipeline runs
and the erasure holds of every ancestor, and a gate reads one lineage, not a project's.
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
    """{version id: DatasetFacts} for ready (or any) dataset versions, in two queries
    whatever their number (the lineages, every version in them), three when some are
    under an erasure hold."""
    from controlplane.datasets.models import DatasetVersion

    ids = set(version_ids)
    if not ids:
        return {}
    lineages, held = _lineages(ids)
    every = set().union(*lineages.values())
    info = {
        row["pk"]: row
        for row in DatasetVersion.objects.filter(pk__in=every).values(
            "pk",
            "number",
            "dataset__slug",
            "dataset__license",
            "dataset__source",
            "storage_bucket",
            "storage_region",
            "produced_by_id",
            "produced_by__kind",
            "produced_by__params",
            "report__residual",
        )
    }
    runs = {
        row["produced_by_id"]: _pipeline_run(row["produced_by_id"], row["produced_by__params"])
        for row in info.values()
        if row["produced_by__kind"] == "data_pipeline"
    }
    holds: dict[int, list[Hold]] = {}
    active = ErasureHold.objects.filter(dataset_version_id__in=held, released_at__isnull=True)
    for hold in active.values("pk", "reference", "dataset_version_id") if held else ():
        row = info[hold["dataset_version_id"]]
        holds.setdefault(hold["dataset_version_id"], []).append(
            Hold(hold["pk"], hold["reference"], version_label(row["dataset__slug"], row["number"]))
        )
    facts = {}
    for pk, lineage in lineages.items():  # nearest first
        row = info[pk]
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


# A version's ancestors through the parent edges, each once at its shortest distance; the
# depth cap only guards against a cycle, which the platform never makes (a version's
# parents exist before it). One query for one version (a gate) or ten thousand (a scan),
# and it reads only the lineages asked for, not every edge of the project.
_LINEAGE_SQL = """
WITH RECURSIVE lineage(start_id, version_id, depth) AS (
    SELECT id, id, 0 FROM {versions} WHERE {seeds}
  UNION
    SELECT lineage.start_id, edge.{parent}, lineage.depth + 1
    FROM lineage JOIN {edges} AS edge ON edge.{child} = lineage.version_id
    WHERE lineage.depth < 1000
)
SELECT start_id, version_id, min(depth) AS depth,
    EXISTS (
        SELECT 1 FROM {holds} AS hold
        WHERE hold.{hold_version} = lineage.version_id AND hold.{released} IS NULL
    ) AS held
FROM lineage
GROUP BY start_id, version_id
ORDER BY start_id, depth, version_id
"""


def _lineages(ids: set[int]) -> tuple[dict[int, list[int]], set[int]]:
    """{version id: [it, its parents, their parents ...]} (nearest first, each once) for
    the versions among `ids` that exist, and which of all those versions are under an
    active erasure hold (so that the holds are read only when there are some)."""
    from django.db import connection

    from controlplane.datasets.models import DatasetVersion

    edges = DatasetVersion.parents.through._meta
    sql = _LINEAGE_SQL.format(
        seeds="{seeds}",
        versions=connection.ops.quote_name(DatasetVersion._meta.db_table),
        edges=connection.ops.quote_name(edges.db_table),
        child=connection.ops.quote_name(edges.get_field("from_datasetversion").column),
        parent=connection.ops.quote_name(edges.get_field("to_datasetversion").column),
        holds=connection.ops.quote_name(ErasureHold._meta.db_table),
        hold_version=connection.ops.quote_name(
            ErasureHold._meta.get_field("dataset_version").column
        ),
        released=connection.ops.quote_name(ErasureHold._meta.get_field("released_at").column),
    )
    ordered = sorted(ids)
    if connection.vendor == "postgresql":
        batches = [("id = ANY(%s)", [ordered])]  # one array parameter, however many ids
    else:  # the embedded SQLite: a bounded number of parameters per statement
        batches = [
            ("id IN (" + ", ".join(["%s"] * len(chunk)) + ")", chunk)
            for chunk in (ordered[i : i + 500] for i in range(0, len(ordered), 500))
        ]
    lineages: dict[int, list[int]] = {}
    held: set[int] = set()
    with connection.cursor() as cursor:
        for seeds, params in batches:
            cursor.execute(sql.replace("{seeds}", seeds), params)
            for start_id, version_id, _depth, is_held in cursor.fetchall():
                lineages.setdefault(start_id, []).append(version_id)
                if is_held:
                    held.add(version_id)
    return lineages, held


def _residual(row: dict[str, Any]) -> dict[str, Any] | None:
    residual = row.get("report__residual")
    return residual if isinstance(residual, dict) else None


def model_version_facts(
    version_ids: Iterable[int], *, with_data: bool = True
) -> dict[int, ModelVersionFacts]:
    """{version id: ModelVersionFacts}: the latest finished evaluation and, `with_data`,
    the dataset versions it was trained on (their facts too). One query for the versions
    (their evaluation as subqueries, their data as a join), then dataset_facts'."""
    from django.db.models import OuterRef, Subquery

    from controlplane.registry.models import ModelEvaluation, ModelVersion

    ids = set(version_ids)
    if not ids:
        return {}
    latest = ModelEvaluation.objects.filter(
        version=OuterRef("pk"), finished_at__isnull=False
    ).order_by("-finished_at", "-id")
    fields = ["pk", "number", "model__name", "evaluation_id", "evaluation_metrics"]
    rows = (
        ModelVersion.objects.filter(pk__in=ids)
        .annotate(
            evaluation_id=Subquery(latest.values("pk")[:1]),
            evaluation_metrics=Subquery(latest.values("metrics")[:1]),
        )
        .order_by("pk", *(["dataset_versions"] if with_data else []))
        .values(*fields, *(["dataset_versions"] if with_data else []))
    )
    versions: dict[int, dict[str, Any]] = {}
    trained_on: dict[int, list[int]] = {}
    for row in rows:  # with data: one row per (version, dataset version), or one with None
        versions.setdefault(row["pk"], row)
        if row.get("dataset_versions") is not None:
            trained_on.setdefault(row["pk"], []).append(row["dataset_versions"])
    data = dataset_facts({d for ds in trained_on.values() for d in ds}) if with_data else {}
    facts = {}
    for pk, row in versions.items():
        metrics = row["evaluation_metrics"]
        facts[pk] = ModelVersionFacts(
            ref=SubjectRef(SubjectType.MODEL_VERSION, pk, f"{row['model__name']} v{row['number']}"),
            evaluation_id=row["evaluation_id"],
            metrics=metrics if isinstance(metrics, dict) else {},
            datasets=[data[d] for d in trained_on.get(pk, ()) if d in data],
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
