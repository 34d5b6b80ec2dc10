"""The money and usage figures of an organisation's overview, shared by the page, its CSV
exports and the API (/api/v1/orgs/<slug>/usage and /cost): one function per figure, each a
few aggregate queries whatever the number of rows behind it.

Scope: an org admin (or staff) sees every project of the organisation, figures only; any
other member sees the projects they are a member of. A figure never reads a project
outside ``scope.project_ids``.

Spend of a month = SUM(cost) of the job attempts that started in it + the storage
snapshots of its days + the serving hours in it. Each usage row stores its cost at the
rate card in force when it happened (finops.models), so these are plain SQL sums.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib.auth.models import User
from django.core.cache import cache
from django.db.models import Count, F, FloatField, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncDate

from controlplane.finops.models import (
    Budget,
    JobAttemptUsage,
    RateCard,
    ServingUsage,
    StorageSnapshot,
)
from controlplane.finops.rates import cents, money_amount
from controlplane.finops.selectors import ZERO, month_bounds
from controlplane.jobs.models import JobState
from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import is_org_admin
from controlplane.projects.models import Project, Role
from controlplane.projects.selectors import projects_visible_to

STORAGE_WINDOW_DAYS = 90  # the growth chart's span; the latest snapshot is looked for in it
FORECAST_METHOD = (
    "linear on days elapsed: spend so far / days elapsed (at least 1) x days in the month"
)
GROUP_BY = ("project", "kind", "day", "deployment")
DEFAULT_CURRENCY = "EUR"


class OverviewParamError(ValueError):
    """A bad query parameter of the overview or its API; ``field`` names it (a 400)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class OverviewScope:
    org: Organisation
    org_admin: bool
    # Org admins and compliance officers get every section; engineers and viewers a lean
    # one (their projects' jobs, spend and models).
    full: bool
    projects: dict[int, Project]
    # The projects the user is a member of: only those link to their pages (an org admin
    # sees the others' figures, not their pages).
    member_ids: frozenset[int] = frozenset()

    @property
    def project_ids(self) -> list[int]:
        return list(self.projects)


def overview_scope(user: User, org: Organisation) -> OverviewScope:
    admin = is_org_admin(user, org)
    projects = Project.objects.filter(organisation=org)
    if not admin:
        projects = projects_visible_to(user, org)
    compliance = (
        not admin
        and projects.filter(memberships__user=user, memberships__role=Role.COMPLIANCE).exists()
    )
    mine = projects if not admin or user.is_staff else projects_visible_to(user, org)
    return OverviewScope(
        org=org,
        org_admin=admin,
        full=admin or compliance,
        projects={
            p.pk: p
            for p in projects.select_related(None).only("pk", "name", "slug").order_by("name", "pk")
        },
        member_ids=frozenset(mine.filter(organisation=org).values_list("pk", flat=True)),
    )


# -- months ------------------------------------------------------------------------------


def parse_month(text: str | None, now: dt.datetime) -> dt.date:
    """The first day of ``YYYY-MM`` (absent: the current month)."""
    if not text:
        return now.date().replace(day=1)
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if not match or not 1 <= int(match[2]) <= 12 or not 2000 <= int(match[1]) <= 2100:
        raise OverviewParamError("month", "use YYYY-MM, e.g. 2026-11")
    return dt.date(int(match[1]), int(match[2]), 1)


def parse_group_by(text: str | None) -> str:
    if not text:
        return "project"
    if text not in GROUP_BY:
        raise OverviewParamError("group_by", f"use one of {', '.join(GROUP_BY)}")
    return text


def forecast(spent: Decimal, month: dt.date, now: dt.datetime) -> Decimal:
    """Spend at the month's end if the rate so far goes on (see FORECAST_METHOD): a past
    month's forecast is its spend, a future month's is nothing yet."""
    start, end = month_bounds(month)
    if now >= end:
        return spent
    if now < start:
        return ZERO
    elapsed_days = max(Decimal((now - start).total_seconds()) / Decimal(86400), Decimal(1))
    days = Decimal((end - start).days)
    return money_amount(spent / elapsed_days * days)


def currency_of(org: Organisation) -> str:
    card = RateCard.objects.filter(organisation=org).order_by("-version").only("currency").first()
    return card.currency if card is not None else DEFAULT_CURRENCY


# -- spend -------------------------------------------------------------------------------


def _usage_in(scope: OverviewScope, month: dt.date) -> QuerySet[JobAttemptUsage]:
    start, end = month_bounds(month)
    return JobAttemptUsage.objects.filter(
        project_id__in=scope.project_ids, started_at__gte=start, started_at__lt=end
    )


def _storage_in(scope: OverviewScope, month: dt.date) -> QuerySet[StorageSnapshot]:
    start, end = month_bounds(month)
    return StorageSnapshot.objects.filter(
        project_id__in=scope.project_ids, day__gte=start.date(), day__lt=end.date()
    )


def _serving_in(scope: OverviewScope, month: dt.date) -> QuerySet[ServingUsage]:
    start, end = month_bounds(month)
    return ServingUsage.objects.filter(
        project_id__in=scope.project_ids, hour__gte=start, hour__lt=end
    )


@dataclass(frozen=True)
class MonthCosts:
    """A month's costs by (project, kind) for jobs and storage and by project for serving:
    the spend by project and the spend by kind both add these up, so the page asks once."""

    jobs: dict[tuple[int, str], Decimal]
    storage: dict[tuple[int, str], Decimal]
    serving: dict[int, Decimal]

    def by_project(self, table: str) -> dict[int, Decimal]:
        totals: dict[int, Decimal] = {}
        for (pk, _kind), cost in getattr(self, table).items():
            totals[pk] = totals.get(pk, ZERO) + cost
        return totals

    def by_kind(self, table: str) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for (_pk, kind), cost in getattr(self, table).items():
            totals[kind] = totals.get(kind, ZERO) + cost
        return totals


def month_costs(scope: OverviewScope, month: dt.date) -> MonthCosts:
    """One round trip: the three GROUP BYs in a UNION ALL, each row tagged with its table."""

    def tagged(queryset: QuerySet, table: str, kind) -> QuerySet:
        return (
            queryset.annotate(source=Value(table), k=kind)
            .values_list("source", "project_id", "k")
            .annotate(total=Sum("cost"))
            .order_by()
        )

    rows = tagged(_usage_in(scope, month), "jobs", F("kind")).union(
        tagged(_storage_in(scope, month), "storage", F("kind")),
        tagged(_serving_in(scope, month), "serving", Value("tokens")),
        all=True,
    )
    tables: dict[str, dict] = {"jobs": {}, "storage": {}, "serving": {}}
    for table, pk, kind, total in rows:
        if table == "serving":
            tables[table][pk] = tables[table].get(pk, ZERO) + total
        else:
            tables[table][(pk, kind)] = total
    return MonthCosts(**tables)


@dataclass
class ProjectSpend:
    project_id: int
    name: str
    slug: str
    jobs: Decimal = ZERO
    storage: Decimal = ZERO
    serving: Decimal = ZERO
    budget: Decimal | None = None
    forecast: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.jobs + self.storage + self.serving

    @property
    def budget_percent(self) -> float | None:
        if not self.budget:
            return None
        return round(float(self.total / self.budget * 100), 1)

    @property
    def forecast_over_budget(self) -> bool:
        return self.budget is not None and self.forecast > self.budget

    def as_row(self) -> dict:
        return {
            "project": self.slug,
            "jobs": str(cents(self.jobs)),
            "storage": str(cents(self.storage)),
            "serving": str(cents(self.serving)),
            "total": str(cents(self.total)),
            "budget": None if self.budget is None else str(cents(self.budget)),
            "budget_percent": self.budget_percent,
            "forecast": str(cents(self.forecast)),
        }


def attention_order(row: ProjectSpend) -> tuple:
    """The projects to look at first: over budget by forecast or 80% spent, then by share
    of budget used, then the biggest spenders."""
    percent = row.budget_percent or 0.0
    return (not row.forecast_over_budget and percent < 80, -percent, -row.total, row.name)


def budgets_for(project_ids: list[int], month: dt.date) -> dict[int, Decimal]:
    """Each project's budget for the month: its own, else its latest recurring one before."""
    rows = (
        Budget.objects.filter(project_id__in=project_ids)
        .filter(Q(month=month) | Q(month__lt=month, recurring=True))
        .order_by("project_id", "-month")
        .values_list("project_id", "amount")
    )
    budgets: dict[int, Decimal] = {}
    for project_id, amount in rows:  # newest month first: keep each project's first row
        budgets.setdefault(project_id, amount)
    # (No DISTINCT ON: the embedded default runs on SQLite; a project has few budgets.)
    return budgets


def spend_by_project(
    scope: OverviewScope, month: dt.date, now: dt.datetime, costs: MonthCosts | None = None
) -> list[ProjectSpend]:
    costs = costs or month_costs(scope, month)
    jobs, storage = costs.by_project("jobs"), costs.by_project("storage")
    serving = costs.serving
    budgets = budgets_for(scope.project_ids, month)
    rows = []
    for pk, project in scope.projects.items():
        row = ProjectSpend(
            pk,
            project.name,
            project.slug,
            jobs=jobs.get(pk) or ZERO,
            storage=storage.get(pk) or ZERO,
            serving=serving.get(pk) or ZERO,
            budget=budgets.get(pk),
        )
        row.forecast = forecast(row.total, month, now)
        rows.append(row)
    return rows


def spend_by_kind(
    scope: OverviewScope, month: dt.date, costs: MonthCosts | None = None
) -> list[dict]:
    """Spend by job kind, then storage by kind and serving: together the month's total."""
    costs = costs or month_costs(scope, month)
    rows = [
        {"source": "jobs", "kind": kind, "cost": total}
        for kind, total in sorted(costs.by_kind("jobs").items())
    ]
    rows += [
        {"source": "storage", "kind": kind, "cost": total}
        for kind, total in sorted(costs.by_kind("storage").items())
    ]
    if costs.serving:
        rows.append({"source": "serving", "kind": "tokens", "cost": sum(costs.serving.values())})
    return rows


def spend_by_day(scope: OverviewScope, month: dt.date) -> list[dict]:
    """The month's spend per day (UTC), jobs + storage + serving, in one round trip."""

    def per_day(queryset: QuerySet, day) -> QuerySet:
        return queryset.annotate(d=day).values_list("d").annotate(total=Sum("cost")).order_by()

    rows = per_day(_usage_in(scope, month), TruncDate("started_at", tzinfo=dt.UTC)).union(
        per_day(_storage_in(scope, month), F("day")),
        per_day(_serving_in(scope, month), TruncDate("hour", tzinfo=dt.UTC)),
        all=True,
    )
    days: dict[dt.date, Decimal] = {}
    for day, total in rows:
        days[day] = days.get(day, ZERO) + total
    return [{"day": day, "cost": total} for day, total in sorted(days.items())]


# -- usage -------------------------------------------------------------------------------


_USAGE_SUMS = {
    "attempts": Count("pk"),
    # Names apart from the fields': an aggregate named like a field shadows it.
    "cpu_total": Coalesce(Sum("cpu_seconds"), 0.0),
    "gpu_total": Coalesce(Sum("gpu_seconds"), 0.0),
    "wall_total": Coalesce(Sum("wall_seconds"), 0.0),
    # Utilisation weighted by GPU time: an hour at 90% counts more than a minute at 10%.
    "util_weighted": Sum(
        F("gpu_util_mean") * F("gpu_seconds"),
        filter=Q(gpu_util_mean__isnull=False),
        output_field=FloatField(),
    ),
    "util_seconds": Sum("gpu_seconds", filter=Q(gpu_util_mean__isnull=False)),
}


def _usage_row(figures: dict) -> dict:
    util = None
    if figures.get("util_seconds"):
        util = round(figures["util_weighted"] / figures["util_seconds"], 1)
    return {
        "attempts": figures["attempts"] or 0,
        "cpu_hours": round(figures["cpu_total"] / 3600, 3),
        "gpu_hours": round(figures["gpu_total"] / 3600, 3),
        "wall_hours": round(figures["wall_total"] / 3600, 3),
        "gpu_util_mean": util,
    }


def usage_totals(scope: OverviewScope, month: dt.date) -> dict:
    return _usage_row(_usage_in(scope, month).aggregate(**_USAGE_SUMS))


def usage_grouped(scope: OverviewScope, month: dt.date, group_by: str) -> list[dict]:
    """Job usage (and serving tokens, by project or day) of the month, one row a group."""
    usage = _usage_in(scope, month)
    serving = _serving_in(scope, month)
    if group_by == "project":
        key, serving_key = "project_id", "project_id"
    elif group_by == "day":
        usage = usage.annotate(g=TruncDate("started_at", tzinfo=dt.UTC))
        serving = serving.annotate(g=TruncDate("hour", tzinfo=dt.UTC))
        key, serving_key = "g", "g"
    else:
        key, serving_key = "kind", None
    groups: dict = {}
    for row in usage.values(key).annotate(**_USAGE_SUMS).order_by():
        groups[row[key]] = _usage_row(row)
    if serving_key is not None:
        for row in (
            serving.values(serving_key)
            .annotate(
                requests=Sum("requests"), tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out")
            )
            .order_by()
        ):
            group = groups.setdefault(row[serving_key], _usage_row(_EMPTY_USAGE))
            group.update(
                requests=row["requests"], tokens_in=row["tokens_in"], tokens_out=row["tokens_out"]
            )
    rows = []
    for group_key, figures in groups.items():
        label = scope.projects[group_key].slug if group_by == "project" else group_key
        rows.append({group_by: label, **_SERVING_ZERO, **figures})
    return sorted(rows, key=lambda row: str(row[group_by]))


def serving_by_deployment(scope: OverviewScope, month: dt.date) -> list[dict]:
    """The month's serving per deployment: requests, tokens in and out, cost (one GROUP BY
    over the hourly rows; a deployment deleted since keeps its rows and its name)."""
    rows = (
        _serving_in(scope, month)
        .values("deployment_id", "deployment__name", "project_id")
        .annotate(
            requests_sum=Sum("requests"),
            tokens_in_sum=Sum("tokens_in"),
            tokens_out_sum=Sum("tokens_out"),
            cost_sum=Sum("cost"),
        )
        .order_by()
    )
    return sorted(
        (
            {
                "deployment": row["deployment__name"],
                "deployment_id": row["deployment_id"],
                "project": scope.projects[row["project_id"]].slug,
                "requests": row["requests_sum"] or 0,
                "tokens_in": row["tokens_in_sum"] or 0,
                "tokens_out": row["tokens_out_sum"] or 0,
                "cost": row["cost_sum"] or ZERO,
            }
            for row in rows
        ),
        key=lambda row: (row["project"], row["deployment"], row["deployment_id"]),
    )


_EMPTY_USAGE = {"attempts": 0, "cpu_total": 0.0, "gpu_total": 0.0, "wall_total": 0.0}
_SERVING_ZERO = {"requests": 0, "tokens_in": 0, "tokens_out": 0}


@dataclass(frozen=True)
class IdleGpu:
    job_id: int
    project_id: int
    project_slug: str
    kind: str
    device_type: str
    device_count: int
    idle_since: dt.datetime
    gpu_util_mean: float | None
    cost_so_far: Decimal  # every attempt of the job


def idle_gpus(scope: OverviewScope) -> list[IdleGpu]:
    """Running jobs whose current attempt's GPUs are flagged idle (the usage helper sets
    ``idle_since`` after N minutes under the threshold)."""
    job_cost = (
        JobAttemptUsage.objects.filter(job_id=OuterRef("job_id"))
        .order_by()
        .values("job_id")
        .annotate(total=Sum("cost"))
        .values("total")
    )
    rows = (
        JobAttemptUsage.objects.filter(
            project_id__in=scope.project_ids,
            idle_since__isnull=False,
            job__state=JobState.RUNNING,
            attempt=F("job__attempt"),
        )
        .annotate(job_cost=Subquery(job_cost))
        .order_by("idle_since")
        .values_list(
            "job_id",
            "project_id",
            "kind",
            "device_type",
            "device_count",
            "idle_since",
            "gpu_util_mean",
            "job_cost",
        )
    )
    return [
        IdleGpu(job, pk, scope.projects[pk].slug, kind, device, count, since, util, cost or ZERO)
        for job, pk, kind, device, count, since, util, cost in rows
    ]


# -- storage -----------------------------------------------------------------------------


@dataclass
class ProjectStorage:
    project_id: int
    name: str
    slug: str
    day: dt.date | None = None
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.by_kind.values())


def storage_reference_day(month: dt.date, now: dt.datetime) -> dt.date:
    """The day storage is shown as of: today for the current month, else the month's end."""
    _, end = month_bounds(month)
    return min(now.date(), end.date() - dt.timedelta(days=1))


def storage_by_project(scope: OverviewScope, as_of: dt.date) -> list[ProjectStorage]:
    """Each project's latest snapshot on or before ``as_of`` (within the 90-day window):
    its bytes by kind that day. A kind without a row that day holds nothing any more.

    Two queries: each project's latest day (one probe of the unique (project, day, kind)
    index per project), then those days' rows."""
    since = as_of - dt.timedelta(days=STORAGE_WINDOW_DAYS)
    latest_day = (
        StorageSnapshot.objects.filter(project_id=OuterRef("pk"), day__lte=as_of, day__gt=since)
        .order_by("-day")
        .values("day")[:1]
    )
    days = {
        pk: day
        for pk, day in Project.objects.filter(pk__in=scope.project_ids)
        .annotate(latest=Subquery(latest_day))
        .filter(latest__isnull=False)
        .values_list("pk", "latest")
    }
    rows = {pk: ProjectStorage(pk, p.name, p.slug) for pk, p in scope.projects.items()}
    if not days:
        return list(rows.values())
    snapshots = StorageSnapshot.objects.filter(
        project_id__in=list(days), day__in=set(days.values())
    ).values_list("project_id", "day", "kind", "bytes")
    for pk, day, kind, size in snapshots:
        if days[pk] == day:  # another project's latest day is not this one's
            rows[pk].day = day
            rows[pk].by_kind[kind] = size
    return list(rows.values())


def storage_growth(scope: OverviewScope, as_of: dt.date) -> dict[str, list[tuple[dt.date, int]]]:
    """Daily totals of bytes by kind over the window ending ``as_of``: {kind: [(day, bytes)]}."""
    rows = (
        StorageSnapshot.objects.filter(
            project_id__in=scope.project_ids,
            day__lte=as_of,
            day__gt=as_of - dt.timedelta(days=STORAGE_WINDOW_DAYS),
        )
        .values_list("day", "kind")
        .annotate(total=Sum("bytes"))
        .order_by("day", "kind")
    )
    lines: dict[str, list[tuple[dt.date, int]]] = {}
    for day, kind, total in rows:
        lines.setdefault(kind, []).append((day, int(total)))
    return lines


STORAGE_CACHE_SECONDS = 300


def storage_section(
    scope: OverviewScope, as_of: dt.date
) -> tuple[list[ProjectStorage], dict[str, list[tuple[dt.date, int]]]]:
    """(storage_by_project, storage_growth), cached: snapshots arrive once a day, and the
    growth chart is the page's costliest query. The key holds the newest snapshot's id, so
    a new snapshot shows at once; a snapshot rewritten in place shows within
    STORAGE_CACHE_SECONDS."""
    newest = StorageSnapshot.objects.order_by("-pk").values_list("pk", flat=True).first()
    projects = hashlib.sha256(",".join(map(str, sorted(scope.project_ids))).encode()).hexdigest()
    key = f"overview:storage:{scope.org.pk}:{as_of}:{newest}:{projects[:24]}"
    found = cache.get(key)
    if found is None:
        found = (storage_by_project(scope, as_of), storage_growth(scope, as_of))
        cache.set(key, found, STORAGE_CACHE_SECONDS)
    return found
