"""Reads for the serving pages: the deployments list, a deployment's header, replicas,
usage over the last hour and its latest requests, each in a few queries.

Usage is aggregated in PostgreSQL (counts, token sums and latency percentiles per minute
from the InferenceRecord index), so an hour of a busy deployment costs what a quiet one
does: 60 rows come back, never the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db.models import Aggregate, Count, FloatField, Q, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from controlplane.datasets.models import DatasetVersion
from controlplane.projects.models import Project
from controlplane.registry.models import ModelAlias, ModelVersion, RegisteredModel, VersionState
from controlplane.registry.selectors import model_in, version_in
from controlplane.serving.models import (
    Deployment,
    InferenceRecord,
    Replica,
)
from controlplane.serving.selectors import serve_origin
from workers.serve.protocol import BASE_PATH, RecordStatus, ReplicaState

USAGE_MINUTES = 60  # the deployment page's charts: the last hour, one point a minute
LATEST_REQUESTS = 20
ENDED_REPLICAS_SHOWN = 10  # history rows under the live replicas
LIVE_REPLICA_STATES = (
    ReplicaState.PENDING,
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
)
# Shown when no node has reported yet: the user still sees the shape of the URL.
NODE_PLACEHOLDER = "http://<serve-node>"


class Percentile(Aggregate):
    """PostgreSQL's `percentile_cont(p) WITHIN GROUP (ORDER BY x)`: an interpolated
    percentile, computed where the rows are."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(percentile)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, percentile: float, **extra):
        if not 0 <= percentile <= 1:
            raise ValueError(f"a percentile is between 0 and 1, not {percentile}")
        super().__init__(expression, percentile=float(percentile), **extra)


@dataclass
class DeploymentRow:
    """One line of the deployments page."""

    deployment: Deployment
    ready: int
    served: list[int]  # version numbers of its ready or draining replicas
    requests_last_hour: int
    base_url: str


def deployments_page(project: Project) -> list[DeploymentRow]:
    """The project's deployments with their ready replicas, the versions they serve and
    their requests of the last hour: three queries whatever their number."""
    hour_ago = timezone.now() - timedelta(hours=1)
    deployments = list(
        Deployment.objects.filter(project=project)
        .select_related("model", "pinned_version", "target_version")
        .annotate(ready_count=Count("replica_set", filter=Q(replica_set__state=ReplicaState.READY)))
        .order_by("name")
    )
    ids = [d.pk for d in deployments]
    served: dict[int, set[int]] = {}
    for deployment_id, number in (
        Replica.objects.filter(
            deployment_id__in=ids, state__in=[ReplicaState.READY, ReplicaState.DRAINING]
        )
        .values_list("deployment_id", "version__number")
        .distinct()
    ):
        served.setdefault(deployment_id, set()).add(number)
    counts = dict(
        InferenceRecord.objects.filter(deployment_id__in=ids, created_at__gte=hour_ago)
        .values_list("deployment_id")
        .annotate(n=Count("id"))
        .values_list("deployment_id", "n")
    )
    origin = serve_origin() or NODE_PLACEHOLDER
    return [
        DeploymentRow(
            deployment=d,
            ready=d.ready_count,
            served=sorted(served.get(d.pk, ())),
            requests_last_hour=counts.get(d.pk, 0),
            base_url=origin + BASE_PATH.format(project=project.slug, deployment=d.name),
        )
        for d in deployments
    ]


@dataclass
class Deployable:
    """A model the deploy form offers, with its ready versions and aliases."""

    name: str
    versions: list[int] = field(default_factory=list)  # ready, newest first
    aliases: list[tuple[str, int]] = field(default_factory=list)  # (alias, version number)


def deployable_models(project: Project) -> list[Deployable]:
    """Models with at least one ready version, for the deploy form (two queries)."""
    models: dict[int, Deployable] = {}
    for model_id, name, number in (
        ModelVersion.objects.filter(model__project=project, state=VersionState.READY)
        .order_by("model__name", "-number")
        .values_list("model_id", "model__name", "number")
    ):
        models.setdefault(model_id, Deployable(name)).versions.append(number)
    for model_id, alias, number in (
        ModelAlias.objects.filter(model_id__in=list(models))
        .order_by("name")
        .values_list("model_id", "name", "version__number")
    ):
        models[model_id].aliases.append((alias, number))
    return list(models.values())


def deploy_target(
    project: Project, model_name: str, number: int | None
) -> tuple[RegisteredModel | None, ModelVersion | None]:
    """The model the form named and, for a pinned deployment, its version (None when the
    model or the version does not exist in the project)."""
    model = model_in(project, model_name)
    if model is None or number is None:
        return model, None
    return model, version_in(model, number)


@dataclass
class Lineage:
    """Where the served version came from: its source job and the datasets under it."""

    job_id: int
    job_kind: str
    datasets: list[DatasetVersion]


def version_lineage(version: ModelVersion) -> Lineage:
    return Lineage(
        job_id=version.source_job_id,
        job_kind=version.source_job.kind,
        datasets=list(
            version.dataset_versions.select_related("dataset").order_by("dataset__slug", "number")
        ),
    )


def served_versions(deployment: Deployment) -> list[ModelVersion]:
    """The versions its ready or draining replicas run (two during an alias switch)."""
    version_ids = Replica.objects.filter(
        deployment=deployment, state__in=[ReplicaState.READY, ReplicaState.DRAINING]
    ).values("version_id")
    return list(ModelVersion.objects.filter(pk__in=version_ids).order_by("-number"))


def replicas_of(deployment: Deployment) -> list[Replica]:
    """The live replicas, then the most recent ended ones (history)."""
    live = list(
        Replica.objects.filter(deployment=deployment, state__in=LIVE_REPLICA_STATES)
        .select_related("node", "version")
        .order_by("created_at")
    )
    ended = list(
        Replica.objects.filter(deployment=deployment)
        .exclude(state__in=LIVE_REPLICA_STATES)
        .select_related("node", "version")
        .order_by("-created_at")[:ENDED_REPLICAS_SHOWN]
    )
    return live + ended


def ready_node_url(deployment: Deployment) -> str | None:
    """The front of a node that runs a ready replica of the deployment (the playground
    calls it, so the request is served without a hop), or None."""
    return (
        Replica.objects.filter(deployment=deployment, state=ReplicaState.READY, node__isnull=False)
        .order_by("-ready_at")
        .values_list("node__url", flat=True)
        .first()
    )


@dataclass
class Usage:
    """The last hour by minute: x is minutes from now (-59 .. 0)."""

    minutes: list[int]
    requests: list[int]
    completion_tokens: list[int]
    p50_ms: list[float | None]
    p95_ms: list[float | None]
    errors: list[int]
    refused: list[int]
    flagged: list[int]

    @property
    def total_requests(self) -> int:
        return sum(self.requests)

    @property
    def total_errors(self) -> int:
        return sum(self.errors)

    @property
    def total_refused(self) -> int:
        return sum(self.refused)

    @property
    def total_flagged(self) -> int:
        return sum(self.flagged)

    def charts(self) -> list[tuple[str, dict]]:
        """(title, {label: [(x, y)]}) for the `line_chart` tag."""

        def line(values, scale: float = 1.0):
            return [
                (m, v / scale if v is not None else None)
                for m, v in zip(self.minutes, values, strict=True)
            ]

        return [
            ("requests / s", {"requests/s": line(self.requests, 60)}),
            ("completion tokens / s", {"tokens/s": line(self.completion_tokens, 60)}),
            ("latency (ms)", {"p50": line(self.p50_ms), "p95": line(self.p95_ms)}),
            (
                "errors, refusals, flags per minute",
                {
                    "errors": line(self.errors),
                    "refused": line(self.refused),
                    "flagged": line(self.flagged),
                },
            ),
        ]


def deployment_usage(deployment: Deployment, now: datetime | None = None) -> Usage:
    """Per minute over the last USAGE_MINUTES: requests, completion tokens, p50/p95
    latency, errors, refusals and flags; minutes without requests count zero."""
    now = now or timezone.now()
    this_minute = now.replace(second=0, microsecond=0)
    start = this_minute - timedelta(minutes=USAGE_MINUTES - 1)
    rows = {
        row["minute"]: row
        for row in InferenceRecord.objects.filter(
            deployment=deployment, created_at__gte=start, created_at__lte=now
        )
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(
            requests=Count("id"),
            tokens=Sum("completion_tokens"),
            p50=Percentile("latency_ms", 0.5),
            p95=Percentile("latency_ms", 0.95),
            errors=Count("id", filter=Q(status=RecordStatus.ERROR)),
            refused=Count("id", filter=Q(status=RecordStatus.REFUSED)),
            flagged=Count("id", filter=Q(status=RecordStatus.FLAGGED)),
        )
    }
    usage = Usage([], [], [], [], [], [], [], [])
    for offset in range(USAGE_MINUTES):
        minute = start + timedelta(minutes=offset)
        row = rows.get(minute, {})
        usage.minutes.append(offset - (USAGE_MINUTES - 1))
        usage.requests.append(row.get("requests", 0))
        usage.completion_tokens.append(row.get("tokens") or 0)
        usage.p50_ms.append(row.get("p50"))
        usage.p95_ms.append(row.get("p95"))
        usage.errors.append(row.get("errors", 0))
        usage.refused.append(row.get("refused", 0))
        usage.flagged.append(row.get("flagged", 0))
    return usage


@dataclass
class RequestRow:
    request_id: str
    created_at: datetime
    caller: str  # "alice", "alice (token 4)", "token 4"
    endpoint: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float


def latest_requests(deployment: Deployment, limit: int = LATEST_REQUESTS) -> list[RequestRow]:
    records = list(
        InferenceRecord.objects.filter(deployment=deployment)
        .order_by("-created_at", "-id")
        .values(
            "request_id",
            "created_at",
            "token_id",
            "user_id",
            "endpoint",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
        )[:limit]
    )
    names = dict(
        get_user_model()
        .objects.filter(pk__in={r["user_id"] for r in records if r["user_id"]})
        .values_list("pk", "username")
    )
    return [
        RequestRow(
            request_id=r["request_id"],
            created_at=r["created_at"],
            caller=_caller_label(names.get(r["user_id"], ""), r["user_id"], r["token_id"]),
            endpoint=r["endpoint"],
            status=r["status"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            latency_ms=r["latency_ms"],
        )
        for r in records
    ]


def _caller_label(username: str, user_id: int | None, token_id: int | None) -> str:
    who = username or (f"user {user_id}" if user_id else "")
    if token_id is None:
        return who or "—"
    return f"{who} (token {token_id})" if who else f"token {token_id}"
