"""Reading money, usage and limits: a project's spend in a month, the budget that applies
to a month, the rate card versions, the GPU jobs that hold a project's quota; measured
usage per job and project (SQL aggregates over the usage tables)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import F, Max, QuerySet, Sum
from django.db.models.functions import Coalesce

from controlplane.finops.models import (
    MONEY,
    Budget,
    JobAttemptUsage,
    OrgWebhook,
    ProjectQuota,
    RateCard,
    ServingUsage,
    StorageSnapshot,
    WebhookDelivery,
)
from controlplane.finops.rates import cents
from controlplane.jobs.models import Job, JobState
from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import is_org_admin
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

GPU_QUEUE = "gpu"
ZERO = Decimal(0)


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def month_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[first instant, first instant of the next month), UTC."""
    start = dt.datetime.combine(month_start(month), dt.time(), tzinfo=dt.UTC)
    end = dt.datetime.combine(next_month(month_start(month)), dt.time(), tzinfo=dt.UTC)
    return start, end


def _sum_cost(queryset: QuerySet) -> Decimal:
    from django.db.models import DecimalField, Value

    zero = Value(ZERO, output_field=DecimalField(**MONEY))
    return queryset.aggregate(total=Coalesce(Sum("cost"), zero))["total"]


@dataclass(frozen=True)
class Spend:
    compute: Decimal
    storage: Decimal
    serving: Decimal

    @property
    def total(self) -> Decimal:
        return self.compute + self.storage + self.serving


def project_spend(project: Project | int, month: dt.date) -> Spend:
    """What the project's usage in the month cost: job attempts by the time they
    started, storage days, serving hours (three SUMs over indexed columns)."""
    project_id = project if isinstance(project, int) else project.pk
    start, end = month_bounds(month)
    first = month_start(month)
    return Spend(
        compute=_sum_cost(
            JobAttemptUsage.objects.filter(
                project_id=project_id, started_at__gte=start, started_at__lt=end
            )
        ),
        storage=_sum_cost(
            StorageSnapshot.objects.filter(
                project_id=project_id, day__gte=first, day__lt=next_month(first)
            )
        ),
        serving=_sum_cost(
            ServingUsage.objects.filter(project_id=project_id, hour__gte=start, hour__lt=end)
        ),
    )


def budget_for(project: Project | int, month: dt.date) -> Budget | None:
    """The month's own budget, else the latest earlier recurring one (None: no budget)."""
    project_id = project if isinstance(project, int) else project.pk
    first = month_start(month)
    own = Budget.objects.filter(project_id=project_id, month=first).first()
    if own is not None:
        return own
    return (
        Budget.objects.filter(project_id=project_id, month__lt=first, recurring=True)
        .order_by("-month")
        .first()
    )


def rate_cards_of(org: Organisation) -> QuerySet[RateCard]:
    return (
        RateCard.objects.filter(organisation=org).select_related("created_by").order_by("-version")
    )


def current_rate_card(org: Organisation) -> RateCard | None:
    return rate_cards_of(org).first()


def quota_of(project: Project | int) -> ProjectQuota | None:
    project_id = project if isinstance(project, int) else project.pk
    return ProjectQuota.objects.filter(project_id=project_id).first()


def gpus_of(params: Any) -> int:
    """GPUs a job holds: resources.devices x resources.nodes (engine/train/resources.py:
    a 2-node job of 4 devices holds 8), each 1 when left out."""
    resources = params.get("resources") if isinstance(params, dict) else None
    if not isinstance(resources, dict):
        return 1
    return _count(resources.get("devices")) * _count(resources.get("nodes"))


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return 1


def gpu_jobs_holding(project_id: int) -> QuerySet[Job]:
    """GPU jobs counted against the quota: admitted (not held for it) and not finished.
    A job waiting for a worker with enough devices (held for "capacity") was admitted:
    it keeps its slot."""
    return Job.objects.filter(
        project_id=project_id,
        queue=GPU_QUEUE,
        state__in=[JobState.QUEUED, JobState.RUNNING],
        held_for__in=["", "capacity"],
    )


def gpu_jobs_held(project_id: int) -> QuerySet[Job]:
    """Jobs waiting for the quota, in submission order."""
    return Job.objects.filter(
        project_id=project_id, state=JobState.QUEUED, held_for="quota"
    ).order_by("created_at", "id")


def webhook_of(org: Organisation) -> OrgWebhook | None:
    return OrgWebhook.objects.filter(organisation=org).first()


def deliveries_of(org: Organisation, limit: int = 20) -> list[WebhookDelivery]:
    return list(
        WebhookDelivery.objects.filter(organisation=org).order_by("-created_at", "-id")[:limit]
    )


# -- who may do what -----------------------------------------------------------------------


def can_read_budget(user: User, project: Project) -> bool:
    return (
        user.is_staff
        or role_of(user, project) is not None
        or is_org_admin(user, project.organisation)
    )


def can_set_budget(user: User, project: Project) -> bool:
    """Owners of the project and admins of its organisation."""
    return (
        user.is_staff
        or role_allows(role_of(user, project), Action.MANAGE)
        or is_org_admin(user, project.organisation)
    )


def can_set_quota(user: User, project: Project) -> bool:
    """Only the organisation's admins: a quota limits what the project's owners spend."""
    return is_org_admin(user, project.organisation)


_SUMS = {
    "wall_seconds": Sum("wall_seconds"),
    "cpu_seconds": Sum("cpu_seconds"),
    "gpu_seconds": Sum("gpu_seconds"),
    "bytes_read": Sum("bytes_read"),
    "bytes_written": Sum("bytes_written"),
    "peak_rss_bytes": Max("peak_rss_bytes"),
    "device_count": Max("device_count"),
    "cost": Sum("cost"),
    # The mean utilisation over every sample of the attempts (each attempt's mean weighs
    # as many samples as it is over).
    "gpu_util_weighted": Sum(F("gpu_util_mean") * F("gpu_util_sample_count")),
    "gpu_util_samples": Sum("gpu_util_sample_count"),
}


def _totals(rows: QuerySet[JobAttemptUsage]) -> dict[str, Any]:
    figures = rows.aggregate(**_SUMS)
    samples = figures.pop("gpu_util_samples") or 0
    weighted = figures.pop("gpu_util_weighted")
    totals = {key: value or 0 for key, value in figures.items()}
    totals["cost"] = Decimal(totals["cost"])
    totals["gpu_util_mean"] = round(weighted / samples, 1) if samples else None
    totals["cpu_hours"] = totals["cpu_seconds"] / 3600
    totals["gpu_hours"] = totals["gpu_seconds"] / 3600
    totals["costs"] = _costs_by_currency(rows)
    totals["currency"] = totals["costs"][0]["currency"] if len(totals["costs"]) == 1 else None
    return totals


def _costs_by_currency(rows: QuerySet[JobAttemptUsage]) -> list[dict[str, Any]]:
    """The cost per currency of the rate cards that priced the rows (attempts priced by no
    card cost nothing and are left out): one entry unless the organisation changed it."""
    grouped = (
        rows.filter(rate_card__isnull=False)
        .values("rate_card__currency")
        .annotate(amount=Sum("cost"))
        .order_by("rate_card__currency")
    )
    return [
        {"currency": row["rate_card__currency"], "amount": cents(row["amount"])} for row in grouped
    ]


def job_usage(job: Any) -> dict[str, Any] | None:
    """A job's usage: the sum over its attempts and each attempt's own figures (None: no
    attempt reported any yet)."""
    rows = JobAttemptUsage.objects.filter(job_id=job.pk)
    attempts = list(rows.select_related("rate_card").order_by("attempt"))
    if not attempts:
        return None
    return {
        "total": _totals(rows),
        "attempts": attempts,
        "idle": next((usage for usage in attempts if is_idle_now(usage)), None),
        "idle_threshold_percent": settings.FINOPS_IDLE_GPU_PERCENT,
    }


def is_idle_now(usage: JobAttemptUsage) -> bool:
    return usage.idle_since is not None and not usage.final


def project_usage(project: Any, since: datetime, until: datetime) -> dict[str, Any]:
    """The usage and cost of a project's attempts that started in [since, until)."""
    rows = JobAttemptUsage.objects.filter(
        project_id=project.pk, started_at__gte=since, started_at__lt=until
    )
    totals = _totals(rows)
    totals["attempts"] = rows.count()
    return totals


def idle_gpu_attempts(
    *, organisation: Any = None, projects: Any = None
) -> QuerySet[JobAttemptUsage]:
    """The attempts whose GPUs are idle now (still running), longest idle first: of an
    organisation's projects, or of the given projects (a queryset or a list)."""
    if (organisation is None) == (projects is None):
        raise ValueError("give an organisation or projects")
    rows = JobAttemptUsage.objects.filter(idle_since__isnull=False, final=False)
    if organisation is not None:
        rows = rows.filter(project__organisation_id=organisation.pk)
    else:
        rows = rows.filter(project__in=projects)
    return rows.select_related("job", "project", "rate_card").order_by("idle_since")


def usage_as_dict(usage: JobAttemptUsage) -> dict[str, Any]:
    """One attempt's usage as the API shows it."""
    return {
        "attempt": usage.attempt,
        "worker": usage.worker,
        "started_at": usage.started_at,
        "updated_at": usage.updated_at,
        "final": usage.final,
        "wall_seconds": usage.wall_seconds,
        "cpu_seconds": usage.cpu_seconds,
        "peak_rss_bytes": usage.peak_rss_bytes,
        "device_type": usage.device_type,
        "device_count": usage.device_count,
        "gpu_seconds": usage.gpu_seconds,
        "gpu_util_mean": usage.gpu_util_mean,
        "idle_since": usage.idle_since,
        "bytes_read": usage.bytes_read,
        "bytes_written": usage.bytes_written,
        "cost": str(cents(usage.cost)),
        "currency": usage.rate_card.currency if usage.rate_card else None,
        "rate_card_version": usage.rate_card.version if usage.rate_card else None,
    }


def job_usage_as_dict(job: Any) -> dict[str, Any] | None:
    """`job_usage` as the job API shows it: the sum and each attempt."""
    usage = job_usage(job)
    if usage is None:
        return None
    total = dict(usage["total"])
    total["cost"] = str(cents(total["cost"]))
    total["costs"] = [{**c, "amount": str(c["amount"])} for c in total["costs"]]
    return {
        "total": total,
        "attempts": [usage_as_dict(row) for row in usage["attempts"]],
        "gpu_idle_since": usage["idle"].idle_since if usage["idle"] else None,
    }
