"""Subjects' facts from the database, in bulk: a gate asks for one subject, the scan for
thousands, through the same functions (a fixed number of queries either way).

Lineage is walked in the database (a recursive query over the version -> parent edges,
`_lineages`), so a version derived from a derived version still finds the pipeline runs
and the erasure holds of every ancestor, and a gate reads one lineage, not a project's.
"""

from __future__ import annotations

import json
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
    ids = set(version_ids)
    if not ids:
        return {}
    lineages, held = _lineages(ids)
    every = set().union(*lineages.values())
    info = _version_rows(every)
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


_VERSION_ROWS_SQL = """
SELECT version.id, version.number, dataset.slug, dataset.license, dataset.source,
    version.storage_bucket, version.storage_region, job.id, job.kind, job.params, {residual}
FROM {versions} AS version JOIN {datasets} AS dataset ON dataset.id = version.dataset_id
LEFT JOIN {jobs} AS job ON job.id = version.produced_by_id
WHERE {seeds}
"""
_VERSION_ROW_KEYS = (
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


def _version_rows(ids: set[int]) -> dict[int, dict[str, Any]]:
    """What a decision reads of each dataset version (its dataset, the job that made it,
    its report's after-cleaning figures), in plain SQL: gates ask it on every job."""
    from django.db import connection

    from controlplane.datasets.models import Dataset, DatasetVersion
    from controlplane.jobs.models import Job

    quote = connection.ops.quote_name
    residual = (
        "version.report -> 'residual'"
        if connection.vendor == "postgresql"
        else "json_extract(version.report, '$.residual')"
    )
    sql = _VERSION_ROWS_SQL.format(
        residual=residual,
        versions=quote(DatasetVersion._meta.db_table),
        datasets=quote(Dataset._meta.db_table),
        jobs=quote(Job._meta.db_table),
        seeds="{seeds}",
    )
    rows = {}
    with connection.cursor() as cursor:
        for seeds, params in id_batches("version.id", ids):
            cursor.execute(sql.replace("{seeds}", seeds), params)
            for values in cursor.fetchall():
                row = dict(zip(_VERSION_ROW_KEYS, values, strict=True))
                row["produced_by__params"] = _json(row["produced_by__params"])
                row["report__residual"] = _json(row["report__residual"])
                rows[row["pk"]] = row
    return rows


def id_batches(column: str, ids: Iterable[int]) -> list[tuple[str, list]]:
    """[(SQL condition, params)] selecting `column` in `ids`: one array parameter on
    PostgreSQL however many ids, chunks of 500 on the embedded SQLite (its parameter cap)."""
    from django.db import connection

    ordered = sorted(ids)
    if connection.vendor == "postgresql":
        return [(f"{column} = ANY(%s)", [ordered])]
    return [
        (f"{column} IN (" + ", ".join(["%s"] * len(chunk)) + ")", chunk)
        for chunk in (ordered[i : i + 500] for i in range(0, len(ordered), 500))
    ]


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
    batches = id_batches("id", ids)
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


# A model version, its model's name, its latest finished evaluation (correlated subqueries:
# SQLite has no LATERAL), the erasure requests that flagged it (ids, comma-separated) and,
# with data, one row per dataset version it was trained on.
_MODEL_VERSION_SQL = """
SELECT version.id, version.number, model.name,
    (SELECT e.id FROM {evaluations} AS e WHERE e.version_id = version.id
        AND e.finished_at IS NOT NULL ORDER BY e.finished_at DESC, e.id DESC LIMIT 1),
    (SELECT e.metrics FROM {evaluations} AS e WHERE e.version_id = version.id
        AND e.finished_at IS NOT NULL ORDER BY e.finished_at DESC, e.id DESC LIMIT 1),
    ({flags}),
    {data_column}
FROM {versions} AS version JOIN {models} AS model ON model.id = version.model_id
{data_join}
WHERE {seeds}
ORDER BY version.id
"""


def model_version_facts(
    version_ids: Iterable[int], *, with_data: bool = True
) -> dict[int, ModelVersionFacts]:
    """{version id: ModelVersionFacts}: the latest finished evaluation, the erasure
    requests that flagged it and, `with_data`,
    the dataset versions it was trained on (their facts too). One query for the versions,
    in plain SQL because gates ask it on every alias move (the ORM's compiling of the
    subqueries cost more than the query), then dataset_facts'."""
    from django.db import connection

    from controlplane.gdpr.models import ErasedDataFlag
    from controlplane.registry.models import ModelEvaluation, ModelVersion, RegisteredModel

    ids = set(version_ids)
    if not ids:
        return {}
    quote = connection.ops.quote_name
    through = ModelVersion.dataset_versions.through._meta
    concat = (
        "string_agg(CAST(f.request_id AS text), ',' ORDER BY f.request_id)"
        if connection.vendor == "postgresql"
        else "group_concat(f.request_id, ',')"
    )
    sql = _MODEL_VERSION_SQL.format(
        flags=f"SELECT {concat} FROM {quote(ErasedDataFlag._meta.db_table)} AS f "
        "WHERE f.model_version_id = version.id",
        evaluations=quote(ModelEvaluation._meta.db_table),
        versions=quote(ModelVersion._meta.db_table),
        models=quote(RegisteredModel._meta.db_table),
        data_column="data.datasetversion_id" if with_data else "NULL",
        data_join=(
            f"LEFT JOIN {quote(through.db_table)} AS data ON data.modelversion_id = version.id"
            if with_data
            else ""
        ),
        seeds="{seeds}",
    )
    versions: dict[int, tuple] = {}
    trained_on: dict[int, list[int]] = {}
    with connection.cursor() as cursor:
        for seeds, params in id_batches("version.id", ids):
            cursor.execute(sql.replace("{seeds}", seeds), params)
            for row in cursor.fetchall():
                pk, number, name, evaluation_id, metrics, flags, data_id = row
                erased_by = tuple(sorted(int(i) for i in (flags or "").split(",") if i))
                versions.setdefault(pk, (number, name, evaluation_id, _json(metrics), erased_by))
                if data_id is not None:
                    trained_on.setdefault(pk, []).append(data_id)
    data = dataset_facts({d for ds in trained_on.values() for d in ds}) if with_data else {}
    facts = {}
    for pk, (number, name, evaluation_id, metrics, erased_by) in versions.items():
        facts[pk] = ModelVersionFacts(
            ref=SubjectRef(SubjectType.MODEL_VERSION, pk, f"{name} v{number}"),
            evaluation_id=evaluation_id,
            metrics=metrics if isinstance(metrics, dict) else {},
            datasets=[data[d] for d in trained_on.get(pk, ()) if d in data],
            erased_by=erased_by,
        )
    return facts


def _json(value: Any) -> Any:
    """A JSON column as a raw cursor returns it: text (Django's loaders), or decoded."""
    if isinstance(value, str | bytes):
        return json.loads(value)
    return value


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
