"""An organisation's usage and cost through the API: the overview's figures, as JSON.

    GET /api/v1/orgs/<slug>/usage   (?month=YYYY-MM, default the current one; ?group_by=)
    GET /api/v1/orgs/<slug>/cost    (?month=YYYY-MM; ?group_by=project|kind|day|deployment)

group_by=deployment: the serving rows alone (requests, tokens in and out, cost per
deployment); job attempts belong to no deployment.

A non-member gets 404, like the organisation itself. An org admin sees every project of
the organisation; any other member the projects they are a member of. The figures come
from finops/overview_selectors.py, which the overview page and its CSV exports use too.
"""

from __future__ import annotations

from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.finops import overview_selectors as money
from controlplane.finops.models import StorageKind
from controlplane.finops.overview_selectors import OverviewParamError, OverviewScope
from controlplane.finops.rates import cents
from controlplane.orgs.selectors import OrgNotFound, org_for

PARAMETERS = [
    OpenApiParameter("month", OpenApiTypes.STR, description="YYYY-MM; default: this month"),
    OpenApiParameter(
        "group_by", OpenApiTypes.STR, enum=list(money.GROUP_BY), description="default: project"
    ),
]


def _request_scope(request, slug: str):
    try:
        org, _role = org_for(request.user, slug)
    except OrgNotFound as error:
        raise exceptions.NotFound(str(error)) from None
    now = timezone.now()
    try:
        month = money.parse_month(request.query_params.get("month"), now)
        group_by = money.parse_group_by(request.query_params.get("group_by"))
    except OverviewParamError as error:
        raise serializers.ValidationError({error.field: [error.message]}) from None
    return money.overview_scope(request.user, org), month, group_by, now


def _header(scope: OverviewScope, month, group_by: str) -> dict:
    return {
        "organisation": scope.org.slug,
        "month": f"{month:%Y-%m}",
        "group_by": group_by,
        "projects": [p.slug for p in scope.projects.values()],
    }


def cost_report(scope: OverviewScope, month, group_by: str, now) -> dict:
    """The month's spend grouped as asked, with its total and forecast (money as strings,
    to the cent: no float rounding on the client)."""
    spend = money.spend_by_project(scope, month, now)
    total = sum((row.total for row in spend), money.ZERO)
    if group_by == "project":
        rows = [row.as_row() for row in spend]
    elif group_by == "kind":
        rows = [{**r, "cost": str(cents(r["cost"]))} for r in money.spend_by_kind(scope, month)]
    elif group_by == "deployment":
        rows = [
            {key: r[key] for key in ("deployment", "deployment_id", "project")}
            | {"cost": str(cents(r["cost"]))}
            for r in money.serving_by_deployment(scope, month)
        ]
    else:
        rows = [
            {"day": r["day"].isoformat(), "cost": str(cents(r["cost"]))}
            for r in money.spend_by_day(scope, month)
        ]
    return {
        **_header(scope, month, group_by),
        "currency": money.currency_of(scope.org),
        "total": str(cents(total)),
        "forecast": str(cents(money.forecast(total, month, now))),
        "forecast_method": money.FORECAST_METHOD,
        "rows": rows,
    }


def usage_report(scope: OverviewScope, month, group_by: str, now) -> dict:
    as_of = money.storage_reference_day(month, now)
    # Storage, like on the page, for org admins and compliance officers only.
    storage = [
        {
            "project": row.slug,
            "as_of": row.day.isoformat() if row.day else None,
            "bytes": {kind: row.by_kind.get(kind, 0) for kind in StorageKind.values},
            "total_bytes": row.total_bytes,
        }
        for row in (money.storage_by_project(scope, as_of) if scope.full else [])
    ]
    if group_by == "deployment":
        rows = [
            {**r, "cost": str(cents(r["cost"]))} for r in money.serving_by_deployment(scope, month)
        ]
    else:
        rows = money.usage_grouped(scope, month, group_by)
    for row in rows:
        if group_by == "day":
            row["day"] = row["day"].isoformat()
    return {
        **_header(scope, month, group_by),
        "totals": money.usage_totals(scope, month),
        "rows": rows,
        "idle_gpus": [
            {
                "job": idle.job_id,
                "project": idle.project_slug,
                "kind": idle.kind,
                "device_type": idle.device_type,
                "device_count": idle.device_count,
                "idle_since": idle.idle_since.isoformat(),
                "cost_so_far": str(cents(idle.cost_so_far)),
            }
            for idle in money.idle_gpus(scope)
        ],
        "storage_as_of": as_of.isoformat(),
        "storage": storage,
    }


class OrgUsage(APIView):
    @extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request, slug: str):
        return Response(usage_report(*_request_scope(request, slug)))


class OrgCost(APIView):
    @extend_schema(parameters=PARAMETERS, responses=OpenApiTypes.OBJECT)
    def get(self, request, slug: str):
        return Response(cost_report(*_request_scope(request, slug)))


# Like every API path, with a trailing slash (a GET without one is redirected to it).
urlpatterns = [
    path("orgs/<slug:slug>/usage/", OrgUsage.as_view(), name="api-org-usage"),
    path("orgs/<slug:slug>/cost/", OrgCost.as_view(), name="api-org-cost"),
]
