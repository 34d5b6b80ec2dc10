"""Rate cards, budgets, quotas and the webhook through the API.

    GET/POST /api/v1/orgs/<slug>/rate-card/            the rates in force; a new version
    GET      /api/v1/orgs/<slug>/rate-card/versions/   every version, newest first
    GET/PUT  /api/v1/orgs/<slug>/webhook/              the notification webhook (admins)
    GET/PUT  /api/v1/projects/<id>/budget/             this month's budget and spend
    GET/PUT  /api/v1/projects/<id>/quota/              the GPU quota and what holds it

Members of an organisation read its rate card; its admins write it, set quotas and the
webhook. A project's owners and the organisation's admins set its budget; its members
read it. Another organisation's objects answer 404. A rate card with a missing or
negative rate answers 400 naming the field (`rates.gpu_hour.default`); an edit made on
a stale version (`base_version`) answers 409.
"""

from __future__ import annotations

import datetime as dt

from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer
from controlplane.api.errors import Conflict
from controlplane.finops import access, selectors, services, summaries
from controlplane.finops.errors import FinopsError
from controlplane.registry.serializers import JSONIntegerField


def raise_finops_error(error: FinopsError):
    if error.fields and error.status == 400:
        raise serializers.ValidationError(error.fields) from None
    classes = {403: exceptions.PermissionDenied, 404: exceptions.NotFound, 409: Conflict}
    if error.status in classes:
        raise classes[error.status](error.message) from None
    raise exceptions.ValidationError({"non_field_errors": [error.message]}) from None


class FinopsView(APIView):
    def handle_exception(self, exc):
        if isinstance(exc, FinopsError):
            try:
                raise_finops_error(exc)
            except exceptions.APIException as mapped:
                exc = mapped
        return super().handle_exception(exc)


# -- serializers (bodies are checked by the services, which name the field) --------------


class RateCardIn(StrictSerializer):
    rates = serializers.JSONField(
        help_text='{"cpu_hour": "0.05", "gpu_hour": {"default": "2.50", "<device name>": "3.20"}, '
        '"storage_gb_month": {"raw", "derived", "checkpoints", "models", "archive"}, '
        '"tokens_million": "0.50"}'
    )
    currency = serializers.JSONField(required=False, default="EUR", help_text="ISO 4217, e.g. EUR")
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)
    base_version = JSONIntegerField(
        required=False,
        min_value=0,
        help_text="The version you edited (0 before the first); another edit since: 409.",
    )


class BudgetIn(StrictSerializer):
    amount = serializers.JSONField(
        allow_null=True, help_text='In the rate card\'s currency, e.g. 500 or "500.00".'
    )
    hard_stop = serializers.BooleanField(required=False, default=False)
    recurring = serializers.BooleanField(required=False, default=True)
    month = serializers.RegexField(
        r"^\d{4}-(0[1-9]|1[0-2])$",
        required=False,
        help_text="YYYY-MM; this month when left out.",
        error_messages={"invalid": "a month like 2026-11"},
    )


class QuotaIn(StrictSerializer):
    max_concurrent_gpu_jobs = serializers.JSONField(
        allow_null=True, help_text="A whole number, or null: no limit."
    )
    max_gpus = serializers.JSONField(
        allow_null=True, help_text="A whole number, or null: no limit."
    )


class WebhookIn(StrictSerializer):
    url = serializers.JSONField()
    secret = serializers.JSONField(
        required=False,
        default=None,
        allow_null=True,
        help_text="Signs each body; left out: kept as it is.",
    )
    enabled = serializers.BooleanField(required=False, default=True)


def _body(serializer_class, request) -> dict:
    body = serializer_class(data=request.data)
    body.is_valid(raise_exception=True)
    return body.validated_data


# -- views -------------------------------------------------------------------------------


class OrgRateCard(FinopsView):
    @extend_schema(responses={200: dict})
    def get(self, request, slug: str):
        """The rate card in force (`current` null before the first version)."""
        org, admin = access.org_of(request.user, slug)
        return Response({**summaries.rate_card_summary(org), "can_edit": admin})

    @extend_schema(request=RateCardIn, responses={201: dict})
    def post(self, request, slug: str):
        """A new version (org admins), in force from now."""
        org, _admin = access.org_of(request.user, slug, admin=True)
        data = _body(RateCardIn, request)
        card = services.rate_card_create(org=org, actor=request.user, **data)
        return Response(summaries.rate_card_body(card), status=201)


class OrgRateCardVersions(FinopsView):
    @extend_schema(responses={200: dict})
    def get(self, request, slug: str):
        org, _admin = access.org_of(request.user, slug)
        return Response(
            {
                "results": [
                    summaries.rate_card_body(card) for card in selectors.rate_cards_of(org)[:200]
                ]
            }
        )


class OrgWebhookView(FinopsView):
    @extend_schema(responses={200: dict})
    def get(self, request, slug: str):
        org, _admin = access.org_of(request.user, slug, admin=True)
        return Response(summaries.webhook_summary(org))

    @extend_schema(request=WebhookIn, responses={200: dict})
    def put(self, request, slug: str):
        org, _admin = access.org_of(request.user, slug, admin=True)
        services.webhook_set(org=org, actor=request.user, **_body(WebhookIn, request))
        return Response(summaries.webhook_summary(org))


def _month(value: str | None) -> dt.date:
    if not value:
        return timezone.now().date().replace(day=1)
    year, month = value.split("-")
    return dt.date(int(year), int(month), 1)


class ProjectBudget(FinopsView):
    @extend_schema(responses={200: dict})
    def get(self, request, project_id: int):
        """This month: the budget in force, the spend by source, the alerts fired."""
        project = access.project_of(request.user, project_id)
        return Response(
            {
                **summaries.budget_summary(project),
                "can_edit": selectors.can_set_budget(request.user, project),
            }
        )

    @extend_schema(request=BudgetIn, responses={200: dict})
    def put(self, request, project_id: int):
        """Set a month's budget (owners, org admins). Below the spend: accepted, alerts at once."""
        project = access.project_of(request.user, project_id)
        data = _body(BudgetIn, request)
        services.budget_set(
            project=project,
            actor=request.user,
            month=_month(data.get("month")),
            amount=data["amount"],
            hard_stop=data["hard_stop"],
            recurring=data["recurring"],
        )
        return Response(summaries.budget_summary(project))


class ProjectQuotaView(FinopsView):
    @extend_schema(responses={200: dict})
    def get(self, request, project_id: int):
        project = access.project_of(request.user, project_id)
        return Response(
            {
                **summaries.quota_summary(project),
                "can_edit": selectors.can_set_quota(request.user, project),
            }
        )

    @extend_schema(request=QuotaIn, responses={200: dict})
    def put(self, request, project_id: int):
        """Set the GPU quota (org admins): null no limit, 0 no GPU jobs."""
        project = access.project_of(request.user, project_id)
        services.quota_set(project=project, actor=request.user, **_body(QuotaIn, request))
        return Response(summaries.quota_summary(project))


ORG = "orgs/<slug:slug>/"
PROJECT = "projects/<int:project_id>/"

urlpatterns = [
    path(ORG + "rate-card/", OrgRateCard.as_view(), name="api-finops-rate-card"),
    path(
        ORG + "rate-card/versions/",
        OrgRateCardVersions.as_view(),
        name="api-finops-rate-card-versions",
    ),
    path(ORG + "webhook/", OrgWebhookView.as_view(), name="api-finops-webhook"),
    path(PROJECT + "budget/", ProjectBudget.as_view(), name="api-finops-budget"),
    path(PROJECT + "quota/", ProjectQuotaView.as_view(), name="api-finops-quota"),
]
