"""Reads for the registry's pages: the rows and figures a page shows, in few queries.

The models page is one query for the models (latest version number, version count and
the last finished evaluation as correlated subqueries, so 100 models cost what 1 does)
plus one for their aliases; a version page reads its version, files, evaluations and
audit events, each once. The model page's lineage graph is built from the versions'
recorded lineage (dataset versions, jobs) with one query per kind of node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.urls import reverse

from controlplane.audit.models import AuditEvent
from controlplane.audit.selectors import actor_names
from controlplane.datasets.lineage import Lineage, Node, layout_lineage
from controlplane.datasets.models import DatasetVersion
from controlplane.jobs.models import Job, JobState
from controlplane.projects.models import Project
from controlplane.registry.card import version_audit_events
from controlplane.registry.evaluations import HEADLINE, compare_metrics
from controlplane.registry.models import (
    ModelAlias,
    ModelEvaluation,
    ModelTask,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    SyncState,
    VersionState,
)
from controlplane.registry.rules import KIND_TASK
from controlplane.registry.selectors import latest_evaluation, models_of, promotions_of

# A list or a chart shows the first few of evaluations.HEADLINE (an evaluation has many:
# pii_<type>, recognition_<digit>...; the version page's table shows them all).
MAX_SHOWN_METRICS = 4
MAX_GRAPH_VERSIONS = 30  # the newest versions drawn in a model's lineage graph
MAX_TABLE_VERSIONS = 200


def _finished_evaluations() -> QuerySet[ModelEvaluation]:
    return ModelEvaluation.objects.filter(finished_at__isnull=False).order_by("-finished_at", "-id")


@dataclass
class ModelRow:
    """One line of the models page, made of plain values (no model instances to build)."""

    name: str
    task: str
    description: str
    latest_number: int | None
    version_count: int
    mlflow_state: str
    last_eval_number: int | None
    last_eval: str  # "val_loss 1.5, perplexity 4.8"
    aliases: list[tuple[str, int]] = field(default_factory=list)  # (alias, version number)

    @property
    def alias_labels(self) -> list[str]:
        return [f"@{alias} → v{number}" for alias, number in self.aliases]

    @property
    def mlflow_label(self) -> str:
        return SyncState(self.mlflow_state).label

    @property
    def task_label(self) -> str:
        return ModelTask(self.task).label


def headline_keys(keys) -> list[str]:
    """The headline figures among `keys`, or the first few by name when there are none."""
    keys = list(keys)
    chosen = [k for k in HEADLINE if k in keys]
    return (chosen or sorted(keys))[:MAX_SHOWN_METRICS]


def figures_text(metrics: dict | None) -> str:
    """ "val_loss 1.5, perplexity 4.48": an evaluation's headline figures on one line."""
    if not metrics:
        return ""
    return ", ".join(
        f"{k} {metrics[k]:.4g}" if _is_number(metrics[k]) else f"{k} {metrics[k]}"
        for k in headline_keys(metrics)
    )


def models_page(project: Project) -> list[ModelRow]:
    """The project's models (selectors.models_of: `latest_number`, `version_count`) with
    their aliases and last finished evaluation: three queries of plain values, so a page
    of 100 models costs little more than one of 10."""
    rows = {
        values["pk"]: ModelRow(
            name=values["name"],
            task=values["task"],
            description=values["description"],
            latest_number=values["latest_number"],
            version_count=values["version_count"],
            mlflow_state=values["mlflow_state"],
            last_eval_number=None,
            last_eval="",
        )
        for values in models_of(project)
        .select_related(None)
        .values(
            "pk",
            "name",
            "task",
            "description",
            "latest_number",
            "version_count",
            "mlflow_state",
        )
    }
    for model_id, alias, number in (
        ModelAlias.objects.filter(model_id__in=list(rows))
        .order_by("name")
        .values_list("model_id", "name", "version__number")
    ):
        rows[model_id].aliases.append((alias, number))
    # The newest finished evaluation per model, in one pass (PostgreSQL's DISTINCT ON).
    for model_id, number, metrics in (
        ModelEvaluation.objects.filter(version__model_id__in=list(rows), finished_at__isnull=False)
        .order_by("version__model_id", "-finished_at", "-id")
        .distinct("version__model_id")
        .values_list("version__model_id", "version__number", "metrics")
    ):
        rows[model_id].last_eval_number = number
        rows[model_id].last_eval = figures_text(metrics)
    return list(rows.values())


def versions_table(model: RegisteredModel) -> list[ModelVersion]:
    """The model's versions, newest first, with their aliases and last evaluation."""
    last_eval = _finished_evaluations().filter(version=OuterRef("pk"))
    return list(
        ModelVersion.objects.filter(model=model)
        .select_related("created_by", "source_job")
        # The table shows none of the large JSON columns; a job's result can be big.
        .defer(
            "lineage",
            "params",
            "architecture",
            "source_job__params",
            "source_job__result",
            "source_job__inputs",
        )
        .prefetch_related("aliases")
        .annotate(
            last_eval_metrics=Subquery(last_eval.values("metrics")[:1]),
            last_eval_job_id=Subquery(last_eval.values("job_id")[:1]),
        )
        .order_by("-number")[:MAX_TABLE_VERSIONS]
    )


def ready_versions(model: RegisteredModel) -> list[ModelVersion]:
    return list(
        ModelVersion.objects.filter(model=model, state=VersionState.READY).order_by("-number")
    )


def evaluations_of(version: ModelVersion) -> list[ModelEvaluation]:
    """Every evaluation of the version, newest first, with its job's state."""
    return list(
        ModelEvaluation.objects.filter(version=version)
        .select_related("job")
        .order_by("-created_at", "-id")
    )


def evaluation_charts(evaluations: list[ModelEvaluation]) -> list[tuple[str, dict]]:
    """[(metric, {"evaluations": [(i, value), ...]})] over the finished evaluations, oldest
    first; only drawn when there are several."""
    finished = sorted(
        (e for e in evaluations if e.finished_at is not None), key=lambda e: (e.finished_at, e.pk)
    )
    if len(finished) < 2:
        return []
    keys = headline_keys({k for e in finished for k, v in e.metrics.items() if _is_number(v)})
    return [
        (
            key,
            {
                key: [
                    (index, e.metrics[key])
                    for index, e in enumerate(finished, 1)
                    if _is_number(e.metrics.get(key))
                ]
            },
        )
        for key in keys
    ]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def evaluation_comparison(a: ModelVersion, b: ModelVersion) -> dict:
    """The latest finished evaluation of two versions side by side: `compare_metrics` rows
    (b - a per metric, and whether b is better).

    Versions from `versions_table` carry their latest evaluation already
    (`last_eval_metrics`, `last_eval_job_id`); others are looked up.
    """

    def latest(version: ModelVersion) -> tuple[dict, int | None]:
        if hasattr(version, "last_eval_metrics"):
            return version.last_eval_metrics or {}, version.last_eval_job_id
        evaluation = latest_evaluation(version)
        return (evaluation.metrics, evaluation.job_id) if evaluation else ({}, None)

    (metrics_a, job_a), (metrics_b, job_b) = latest(a), latest(b)
    rows = compare_metrics([metrics_a, metrics_b])
    return {"a": a, "b": b, "job_a": job_a, "job_b": job_b, "rows": rows}


def version_history(version: ModelVersion) -> tuple[list[AuditEvent], dict[int, str]]:
    """The version's audit timeline, newest first, and the names of its actors."""
    events = version_audit_events(version)[::-1]
    return events, actor_names(events)


def decided_promotions_of(project: Project, limit: int = 20) -> list[PromotionRequest]:
    return list(
        promotions_of(project)
        .exclude(state=PromotionState.PENDING)
        .order_by("-decided_at", "-id")[:limit]
    )


def pending_of_model(model: RegisteredModel) -> list[PromotionRequest]:
    return list(
        PromotionRequest.objects.filter(model=model, state=PromotionState.PENDING)
        .select_related("version", "requested_by")
        .order_by("alias")
    )


def model_names_of(project: Project) -> list[str]:
    return list(
        RegisteredModel.objects.filter(project=project)
        .order_by("name")
        .values_list("name", flat=True)
    )


def registrable(job: Job) -> bool:
    """Whether the job's page offers "Register this model"."""
    return job.state == JobState.SUCCEEDED and job.kind in KIND_TASK


def versions_from_job(job: Job) -> list[ModelVersion]:
    """The registry versions made from this job (shown on its page)."""
    return list(
        ModelVersion.objects.filter(source_job=job)
        .exclude(state=VersionState.DELETED)
        .select_related("model")
        .order_by("model__name", "number")
    )


def model_lineage(model: RegisteredModel, versions: list[ModelVersion]) -> Lineage:
    """Dataset versions -> the jobs that read them -> the jobs built on those -> versions.

    `versions`: the model's versions as the page read them (newest first); the newest
    MAX_GRAPH_VERSIONS that are not deleted are drawn. Every node links to its page
    (`Node.url`); columns follow the edges' depth.
    """
    project_id = model.project_id
    versions = [v for v in versions if v.state != VersionState.DELETED][:MAX_GRAPH_VERSIONS]
    version_ids = [v.pk for v in versions]
    lineage_job_ids = ModelVersion.lineage_jobs.through.objects.filter(
        modelversion_id__in=version_ids
    ).values("job_id")
    jobs = {
        j.pk: j
        for j in Job.objects.filter(project_id=project_id)
        .filter(Q(pk__in=lineage_job_ids) | Q(pk__in=[v.source_job_id for v in versions]))
        .only("id", "kind", "state", "params")
    }
    dataset_version_ids = ModelVersion.dataset_versions.through.objects.filter(
        modelversion_id__in=version_ids
    ).values("datasetversion_id")
    dataset_versions = {
        dv.pk: dv
        for dv in DatasetVersion.objects.filter(pk__in=dataset_version_ids)
        .select_related("dataset")
        .only("id", "number", "state", "produced_by_id", "dataset__slug", "dataset__kind")
    }
    lineage = Lineage()
    for dv in dataset_versions.values():
        key = f"d{dv.pk}"
        node = Node(
            key, f"{dv.dataset.slug} v{dv.number}", dv.dataset.kind, "dataset", dv.pk, dv.state
        )
        node.url = reverse("dataset-version", args=[project_id, dv.dataset_id, dv.number])
        lineage.nodes[key] = node
        if dv.produced_by_id in jobs:
            lineage.edges.append((f"j{dv.produced_by_id}", key))
    for job in jobs.values():
        key = f"j{job.pk}"
        node = Node(key, f"job {job.pk}", job.kind, "job", job.pk, job.state)
        node.url = reverse("job-detail", args=[project_id, job.pk])
        lineage.nodes[key] = node
        source = job.params.get("dataset_version_id")
        if isinstance(source, int) and source in dataset_versions:
            lineage.edges.append((f"d{source}", key))
        for param in ("base_job_id", "reward_job_id"):
            source = job.params.get(param)
            if isinstance(source, int) and source in jobs:
                lineage.edges.append((f"j{source}", key))
    for version in versions:
        key = f"m{version.pk}"
        node = Node(
            key,
            f"{model.name} v{version.number}"[:24],
            "model version",
            "model",
            version.number,
            version.state,
        )
        node.url = reverse("registry-version", args=[project_id, model.name, version.number])
        lineage.nodes[key] = node
        lineage.edges.append((f"j{version.source_job_id}", key))
    lineage.edges = sorted(set(lineage.edges))
    layout_lineage(lineage)
    return lineage
