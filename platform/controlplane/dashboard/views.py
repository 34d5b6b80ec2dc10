"""The shell's pages: the organisation overview (and its CSV exports), and the health
probes.

Each app's pages live in its own views.py (projects, uploads, datasets, jobs, audit).
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from controlplane.dashboard import selectors
from controlplane.dashboard.overview_tables import TABLES, table_csv
from controlplane.finops import overview_selectors as money
from controlplane.finops.models import StorageKind
from controlplane.finops.overview_selectors import OverviewParamError, OverviewScope
from controlplane.health import liveness_report, readiness_report
from controlplane.orgs.current import current_org


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: cheap (no network call), always 200; names the dependencies seen failing."""
    return JsonResponse(liveness_report())


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database, broker, object store and cache checked, each with its latency;
    503 only when the database does not answer (see controlplane/health.py)."""
    report, ready = readiness_report()
    return JsonResponse(report, status=200 if ready else 503)


def _scope(request: HttpRequest) -> OverviewScope | None:
    org = current_org(request)
    return None if org is None else money.overview_scope(request.user, org)


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    try:
        month = money.parse_month(request.GET.get("month"), now)
    except OverviewParamError as error:
        return HttpResponseBadRequest(str(error))
    scope = _scope(request)
    if scope is None:
        return render(request, "dashboard/overview.html", {"scope": None})
    return render(request, "dashboard/overview.html", overview_context(scope, month, now))


@login_required
def overview_export(request: HttpRequest, table: str) -> HttpResponse:
    """One overview table as CSV, the same rows as on the page (all of them)."""
    now = timezone.now()
    try:
        month = money.parse_month(request.GET.get("month"), now)
    except OverviewParamError as error:
        return HttpResponseBadRequest(str(error))
    scope = _scope(request)
    spec = TABLES.get(table)
    if scope is None or spec is None or (spec.full_only and not scope.full):
        raise Http404("no such table")
    body = table_csv(spec, spec.rows(scope, month, now))
    response = HttpResponse(body, content_type="text/csv; charset=utf-8")
    filename = f"{scope.org.slug}-{table}-{month:%Y-%m}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def overview_context(scope: OverviewScope, month: dt.date, now: dt.datetime) -> dict:
    """Every section of the overview the scope allows (importable: the demo prints it)."""
    idle = money.idle_gpus(scope)
    models = selectors.production_models(scope, now)
    costs = money.month_costs(scope, month)
    spend = money.spend_by_project(scope, month, now, costs)
    total = sum((row.total for row in spend), money.ZERO)
    budgeted = [row for row in spend if row.budget is not None]
    by_kind = money.spend_by_kind(scope, month, costs)
    by_day = money.spend_by_day(scope, month)
    start, end = money.month_bounds(month)
    compliance = selectors.compliance_by_project(scope)
    context = {
        "scope": scope,
        "org": scope.org,
        "month": month,
        "month_param": f"{month:%Y-%m}",
        "previous_month": f"{start - dt.timedelta(days=1):%Y-%m}",
        "next_month": f"{end:%Y-%m}" if end <= now else None,
        "currency": money.currency_of(scope.org),
        # The projects that need a look first (over or near budget, then the biggest
        # spenders); the CSV export has every project.
        "spend": sorted(spend, key=money.attention_order)[: selectors.LIST_LIMIT],
        "project_count": len(spend),
        "spend_total": total,
        "spend_forecast": money.forecast(total, month, now),
        "budget_total": sum((row.budget for row in budgeted), money.ZERO) if budgeted else None,
        "forecast_method": money.FORECAST_METHOD,
        "spend_by_kind": by_kind,
        "kind_bars": [(f"{row['source']}: {row['kind']}", float(row["cost"])) for row in by_kind],
        # x: the day of the month.
        "day_chart": {
            "spend per day": [
                ((row["day"] - start.date()).days + 1, float(row["cost"])) for row in by_day
            ]
        },
        "usage": money.usage_totals(scope, month),
        "usage_rows": TABLES["usage"].rows(scope, month, now)[: selectors.LIST_LIMIT],
        "idle_gpus": idle[: selectors.LIST_LIMIT],  # the longest idle first
        "idle_count": len(idle),
        "jobs": selectors.job_figures(scope, now),
        "queued": selectors.queued_jobs(scope, limit=selectors.LIST_LIMIT),
        "job_window_days": selectors.JOB_WINDOW_DAYS,
        "models": sorted(models, key=selectors.risk_order)[: selectors.LIST_LIMIT],
        "model_count": len(models),
        "storage_kinds": StorageKind.choices,
        "list_limit": selectors.LIST_LIMIT,
        # Each project's policy, open violations by rule, waivers, holds and denials.
        "compliance": compliance[: selectors.LIST_LIMIT],
        "compliance_days": selectors.COMPLIANCE_DAYS,
    }
    if scope.full:
        context.update(_full_sections(scope, month, now))
        # The tiles add up the per-project rows the page already has (no counting again).
        queues = context["compliance_queues"]
        context["compliance_counts"] = {
            "open_violations": sum(row.open_violations for row in compliance),
            **{queue: sum(row[queue] for row in queues) for queue in selectors.COMPLIANCE_TILES},
        }
    return context


def _full_sections(scope: OverviewScope, month: dt.date, now: dt.datetime) -> dict:
    as_of = money.storage_reference_day(month, now)
    storage, growth = money.storage_section(scope, as_of)
    first = as_of - dt.timedelta(days=money.STORAGE_WINDOW_DAYS - 1)
    totals: dict[dt.date, int] = {}
    for points in growth.values():
        for day, size in points:
            totals[day] = totals.get(day, 0) + size
    lines = {"total": sorted(totals.items()), **growth} if totals else {}
    requests = selectors.open_subject_requests(scope, now)
    return {
        "storage": sorted(storage, key=lambda row: -row.total_bytes)[: selectors.LIST_LIMIT],
        "storage_as_of": as_of,
        "storage_total": sum(row.total_bytes for row in storage),
        # x: days into the window; GB on y, so the axis reads in a unit people know.
        "growth_chart": {
            kind: [((day - first).days, size / 1e9) for day, size in points]
            for kind, points in lines.items()
        },
        "growth_from": f"{first:%Y-%m-%d}",
        "growth_to": f"{as_of:%Y-%m-%d}",
        "subject_requests": requests[: selectors.LIST_LIMIT],
        "subject_request_count": len(requests),
        **_compliance_queues(scope),
    }


def _compliance_queues(scope: OverviewScope) -> dict:
    """Each compliance tile's link, and the per-project rows behind the tiles.

    A tile whose items are all in one project the user is a member of links straight to
    that project's page (its requests, its promotion reviews, its review queue); items
    spread over projects link to the per-project table, whose counts link to each page.
    Projects the user only sees as an org admin get figures without links (their pages
    answer 404 to a non-member).
    """
    queues = selectors.compliance_queues_by_project(scope)
    rows = []
    for project_id, counts in queues.items():
        member = project_id in scope.member_ids
        links = {
            queue: reverse(page, args=[project_id]) if member and counts[queue] else None
            for queue, page in selectors.COMPLIANCE_QUEUES.items()
        }
        rows.append(
            {"project_id": project_id, "name": scope.projects[project_id].name, "links": links}
            | counts
        )
    rows.sort(key=lambda row: row["name"])
    tile_links = {}
    for queue in selectors.COMPLIANCE_QUEUES:
        holding = [row for row in rows if row[queue]]
        single = len(holding) == 1 and holding[0]["links"][queue]
        tile_links[queue] = single or "#compliance-queues"
    return {"compliance_queues": rows, "compliance_tile_links": tile_links}
