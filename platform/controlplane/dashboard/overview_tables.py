"""The overview's tables as rows of plain values: what the page shows, what its CSV export
(/overview/export/<table>.csv) writes, column for column.

`overview_context` gathers every section the user's scope allows for the page.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.dashboard import selectors
from controlplane.finops import overview_selectors as money
from controlplane.finops.models import StorageKind
from controlplane.finops.overview_selectors import OverviewScope
from controlplane.finops.rates import cents


@dataclass(frozen=True)
class Table:
    title: str
    columns: list[str]
    rows: Callable[[OverviewScope, dt.date, dt.datetime], list[dict]]
    full_only: bool = False  # storage and compliance: org admins and compliance officers


def _spend(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    rows = sorted(money.spend_by_project(scope, month, now), key=money.attention_order)
    return [row.as_row() for row in rows]


def _spend_by_kind(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [{**row, "cost": str(cents(row["cost"]))} for row in money.spend_by_kind(scope, month)]


def _spend_by_day(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [
        {"day": row["day"].isoformat(), "cost": str(cents(row["cost"]))}
        for row in money.spend_by_day(scope, month)
    ]


def _storage(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    as_of = money.storage_reference_day(month, now)
    return [
        {
            "project": row.slug,
            "as_of": row.day.isoformat() if row.day else "",
            **{kind: row.by_kind.get(kind, 0) for kind in StorageKind.values},
            "total": row.total_bytes,
        }
        for row in money.storage_by_project(scope, as_of)
    ]


def _usage(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    """The month's job attempts per project, the most GPU hours first (project_id: for
    the page's links; the CSV writes only the columns)."""
    ids = {project.slug: pk for pk, project in scope.projects.items()}
    rows = [
        {**row, "project_id": ids[row["project"]]}
        for row in money.usage_grouped(scope, month, "project")
        if row["attempts"]  # a project that only served has no job attempts to show
    ]
    return sorted(rows, key=lambda row: (-row["gpu_hours"], -row["cpu_hours"], row["project"]))


def _compliance(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [
        {
            "project": row.project.slug,
            "policy": row.policy_label,
            "open_violations": row.open_violations,
            "violations": "; ".join(f"{title}: {count}" for title, count in row.violations),
            "waivers": row.waivers,
            "holds": row.holds,
            "denials": row.denials,
        }
        for row in selectors.compliance_by_project(scope)
    ]


def _compliance_queues(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    queues = selectors.compliance_queues_by_project(scope)
    rows = [
        {"project": scope.projects[pk].slug, "name": scope.projects[pk].name, **counts}
        for pk, counts in queues.items()
    ]
    return sorted(rows, key=lambda row: (row["name"], row["project"]))


def _idle_gpus(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [
        {
            "job": row.job_id,
            "project": row.project_slug,
            "kind": row.kind,
            "device_type": row.device_type,
            "device_count": row.device_count,
            "idle_since": row.idle_since.isoformat(),
            "idle_minutes": int((now - row.idle_since).total_seconds() // 60),
            "gpu_util_mean": row.gpu_util_mean,
            "cost_so_far": str(cents(row.cost_so_far)),
        }
        for row in money.idle_gpus(scope)
    ]


def _queued(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [
        {**row, "queued_at": row["queued_at"].isoformat()} for row in selectors.queued_jobs(scope)
    ]


def _models(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [
        {**row, "aliases": " ".join(row["aliases"]), "deployments": " ".join(row["deployments"])}
        for row in sorted(selectors.production_models(scope, now), key=selectors.risk_order)
    ]


def _subject_requests(scope: OverviewScope, month: dt.date, now: dt.datetime) -> list[dict]:
    return [
        {
            **row,
            "received_at": row["received_at"].isoformat(),
            "deadline_at": row["deadline_at"].isoformat(),
        }
        for row in selectors.open_subject_requests(scope, now)
    ]


TABLES: dict[str, Table] = {
    "spend": Table(
        "Spend by project",
        ["project", "jobs", "storage", "serving", "total", "budget", "budget_percent", "forecast"],
        _spend,
    ),
    "spend-by-kind": Table("Spend by kind", ["source", "kind", "cost"], _spend_by_kind),
    "spend-by-day": Table("Spend by day", ["day", "cost"], _spend_by_day),
    "usage": Table(
        "GPU and CPU hours by project",
        ["project", "attempts", "gpu_hours", "gpu_util_mean", "cpu_hours", "wall_hours"],
        _usage,
    ),
    "idle-gpus": Table(
        "Idle GPUs",
        [
            "job",
            "project",
            "kind",
            "device_type",
            "device_count",
            "idle_since",
            "idle_minutes",
            "gpu_util_mean",
            "cost_so_far",
        ],
        _idle_gpus,
    ),
    "queued-jobs": Table(
        "Queued jobs",
        ["job", "project", "kind", "queue", "queued_at", "waiting_minutes", "reason", "detail"],
        _queued,
    ),
    "models": Table(
        "Models in production",
        [
            "project",
            "model",
            "version",
            "aliases",
            "deployments",
            "trained_on_erased_data",
            "open_violations",
            "evaluation_age_days",
        ],
        _models,
    ),
    "storage": Table(
        "Storage by project",
        ["project", "as_of", *StorageKind.values, "total"],
        _storage,
        full_only=True,
    ),
    "subject-requests": Table(
        "Open data-subject requests",
        [
            "request",
            "project",
            "kind",
            "state",
            "received_at",
            "deadline_at",
            "days_left",
            "overdue",
        ],
        _subject_requests,
        full_only=True,
    ),
    "compliance-queues": Table(
        "Compliance queues by project",
        ["project", *selectors.COMPLIANCE_QUEUES],
        _compliance_queues,
        full_only=True,
    ),
    "compliance": Table(
        "Compliance by project",
        ["project", "policy", "open_violations", "violations", "waivers", "holds", "denials"],
        _compliance,
    ),
}


def table_csv(table: Table, rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(table.columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _cell(row.get(c)) for c in table.columns])
    return out.getvalue()


def _cell(value: object) -> str:
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet (CSV injection); names are
    # user input. Numbers (a negative one too) stay numbers.
    if text[:1] in ("=", "+", "@") or (text[:1] == "-" and not _is_number(text)):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
