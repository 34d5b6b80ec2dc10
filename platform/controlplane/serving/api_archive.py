"""REST API of the inference archive: search a deployment's requests, read one, export them
as JSONL; and a project's serving settings (the archive's retention).

Viewers and up read (compliance officers included); only owners change the retention.
Another project's deployments are 404, like the project itself.

    GET   /api/v1/projects/<id>/deployments/<name>/requests/?since=&until=&token_id=
          &user_id=&subject=&status=&endpoint=            index rows, newest first, paginated
    GET   /api/v1/projects/<id>/deployments/<name>/requests/<request_id>/   the full record
    GET   /api/v1/projects/<id>/deployments/<name>/requests/export/?...     JSONL, streamed
    GET   /api/v1/projects/<id>/serving-settings/
    PATCH /api/v1/projects/<id>/serving-settings/         {"retention_days": 1..3650}
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.http import StreamingHttpResponse
from django.urls import path
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.errors import ServiceUnavailable
from controlplane.api.params import choice_param, text_param
from controlplane.audit.services import audit_append
from controlplane.projects.permissions import Action
from controlplane.serving import archive
from controlplane.serving.models import (
    MAX_RETENTION_DAYS,
    Deployment,
    InferenceRecord,
)
from workers.serve.protocol import Endpoint, RecordStatus

FILTERS = [
    OpenApiParameter("since", str, description="ISO 8601 time (or unix seconds): from"),
    OpenApiParameter("until", str, description="ISO 8601 time (or unix seconds): before"),
    OpenApiParameter("token_id", int),
    OpenApiParameter("user_id", int),
    OpenApiParameter(
        "subject", str, description="a data subject's identifier (X-Data-Subject), matched by hash"
    ),
    OpenApiParameter("status", enum=[s.value for s in RecordStatus]),
    OpenApiParameter("endpoint", enum=[e.value for e in Endpoint]),
]


class InferenceRecordOut(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")
    time = serializers.DateTimeField(source="created_at")

    class Meta:
        model = InferenceRecord
        fields = [
            "request_id",
            "time",
            "endpoint",
            "status",
            "version",
            "token_id",
            "user_id",
            "subject_hash",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "first_token_ms",
        ]


class ServingSettingsOut(serializers.Serializer):
    retention_days = serializers.IntegerField()


class ServingSettingsIn(StrictSerializer):
    retention_days = serializers.IntegerField(min_value=1, max_value=MAX_RETENTION_DAYS)


# -- lookups and filters -------------------------------------------------------------------


def deployment_or_404(request, project_id: int, name: str) -> Deployment:
    project = project_or_404(request, project_id, Action.VIEW)
    deployment = Deployment.objects.filter(project=project, name=name).first()
    if deployment is None:
        raise exceptions.NotFound(f"no deployment named '{name}' in this project")
    return deployment


def parse_time(name: str, text: str | None) -> dt.datetime | None:
    """An ISO 8601 time (naive = UTC) or unix seconds; None when absent; ValueError if bad."""
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not -1e11 < seconds < 1e11:
            raise ValueError(f"{name}: {text!r} is not a time")
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    try:
        when = parse_datetime(text)
    except ValueError:
        when = None
    if when is None:
        raise ValueError(f"{name}: use an ISO 8601 time like 2026-05-01T12:00:00Z")
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def parse_id(name: str, text: str | None) -> int | None:
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) >= 2**31:
        raise ValueError(f"{name}: must be a whole number")
    return int(text)


def search_filters(request) -> dict:
    """The archive filters of an API request; a bad one is a 400 naming it."""
    raw = {name: text_param(request, name) for name in ("since", "until", "token_id", "user_id")}
    try:
        filters = {
            "since": parse_time("since", raw["since"]),
            "until": parse_time("until", raw["until"]),
            "token_id": parse_id("token_id", raw["token_id"]),
            "user_id": parse_id("user_id", raw["user_id"]),
        }
    except ValueError as error:
        name, _, message = str(error).partition(": ")
        raise serializers.ValidationError({name: [message]}) from None
    filters["subject"] = text_param(request, "subject", max_length=320)
    filters["status"] = choice_param(request, "status", [s.value for s in RecordStatus])
    filters["endpoint"] = choice_param(request, "endpoint", [e.value for e in Endpoint])
    return filters


def export_response(deployment: Deployment, filters: dict, actor) -> StreamingHttpResponse:
    """The JSONL download of a search, audited (who exported what) before it starts."""
    with transaction.atomic():
        audit_append(
            project=deployment.project,
            actor=actor,
            action="serving_archive.exported",
            artifact=deployment,
            payload={
                "deployment": deployment.name,
                # The raw subject never goes into the trail: its hash does.
                "filters": {
                    **{k: v for k, v in filters.items() if k != "subject" and v is not None},
                    **(
                        {
                            "subject_hash": archive.hash_subject(
                                deployment.project, filters["subject"]
                            )
                        }
                        if filters.get("subject")
                        else {}
                    ),
                },
            },
        )
    rows = archive.search(deployment, **filters)
    response = StreamingHttpResponse(
        archive.export_lines(rows), content_type="application/x-ndjson; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{deployment.name}-requests.jsonl"'
    response["Cache-Control"] = "no-store"
    return response


# -- views ---------------------------------------------------------------------------------


class RequestList(generics.GenericAPIView):
    serializer_class = InferenceRecordOut

    @extend_schema(parameters=FILTERS, responses=InferenceRecordOut(many=True))
    def get(self, request, project_id: int, name: str):
        deployment = deployment_or_404(request, project_id, name)
        rows = archive.search(deployment, **search_filters(request))
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(InferenceRecordOut(page, many=True).data)


class RequestDetail(APIView):
    @extend_schema(responses={200: dict})
    def get(self, request, project_id: int, name: str, request_id: str):
        """The full archived record: input, output, guardrail decisions, timings, caller."""
        deployment = deployment_or_404(request, project_id, name)
        row = archive.record_in(deployment, request_id)
        if row is None:
            raise exceptions.NotFound(f"no archived request {request_id} in {deployment.name}")
        try:
            return Response(archive.read_record(row))
        except archive.RecordUnavailable as error:
            if error.gone:
                raise exceptions.NotFound(str(error)) from None
            raise ServiceUnavailable(str(error)) from None


class RequestExport(APIView):
    @extend_schema(parameters=FILTERS, responses={(200, "application/x-ndjson"): str})
    def get(self, request, project_id: int, name: str):
        """Every matching record in full, one JSON object a line (streamed; audited)."""
        deployment = deployment_or_404(request, project_id, name)
        return export_response(deployment, search_filters(request), request.user)


class ServingSettingsView(APIView):
    @extend_schema(responses=ServingSettingsOut)
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        return Response({"retention_days": archive.retention_days_of(project)})

    @extend_schema(request=ServingSettingsIn, responses=ServingSettingsOut)
    def patch(self, request, project_id: int):
        """How many days the inference archive keeps records (owners only; audited)."""
        project = project_or_404(request, project_id, Action.MANAGE)
        body = ServingSettingsIn(data=request.data)
        body.is_valid(raise_exception=True)
        row = archive.serving_settings_update(
            project=project, actor=request.user, **body.validated_data
        )
        return Response({"retention_days": row.retention_days})


DEPLOYMENT = "projects/<int:project_id>/deployments/<str:name>/"

# Mounted under /api/v1/ (controlplane/api/urls.py). The export comes before the detail
# route, whose <request_id> would otherwise match "export".
urlpatterns = [
    path(DEPLOYMENT + "requests/", RequestList.as_view(), name="api-serving-requests"),
    path(DEPLOYMENT + "requests/export/", RequestExport.as_view(), name="api-serving-export"),
    path(
        DEPLOYMENT + "requests/<str:request_id>/",
        RequestDetail.as_view(),
        name="api-serving-request",
    ),
    path(
        "projects/<int:project_id>/serving-settings/",
        ServingSettingsView.as_view(),
        name="api-serving-settings",
    ),
]
