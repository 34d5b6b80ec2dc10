"""Waivers and erasure holds through the API; violations and scans are in
api_violations.py (the routes and roles of both are listed here).

    GET/POST   /api/v1/projects/<id>/waivers/                 (?active=1)
    POST       /api/v1/projects/<id>/waivers/<waiver>/revoke/
    GET/POST   /api/v1/projects/<id>/erasure-holds/           (?active=1)
    POST       /api/v1/projects/<id>/erasure-holds/<hold>/release/
    GET        /api/v1/projects/<id>/violations/              (?state=open|resolved, ?rule=)
    GET/PATCH  /api/v1/projects/<id>/violations/<violation>/  (assignee)
    GET/POST   /api/v1/projects/<id>/violations/<violation>/comments/
    POST       /api/v1/projects/<id>/violations/<violation>/resolve/
    GET/POST   /api/v1/projects/<id>/policy-scans/
    GET        /api/v1/projects/<id>/policy-scans/<scan>/
    GET/POST   /api/v1/policy-scans/                          (staff: every project)

Roles: every member reads and comments; compliance officers grant and revoke waivers;
owners and compliance officers place and release holds, assign and resolve violations
and start scans. A non-member gets 404 for everything, like the project itself; a row of
another project, or a waiver's subject in another project, is 404 too. The services
raise PolicyError subclasses, which the API's exception handler answers with their status.
"""

from __future__ import annotations

from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param
from controlplane.policies import selectors
from controlplane.policies.models import (
    ErasureHold,
    Waiver,
)
from controlplane.policies.rules import RULES
from controlplane.policies.waivers import (
    MAX_TEXT,
    WAIVABLE,
    hold_place,
    hold_release,
    waiver_grant,
    waiver_revoke,
)
from controlplane.projects.permissions import Action
from controlplane.registry.serializers import JSONIntegerField

RULE_KEYS = [key.value for key in RULES]
ACTIVE_VALUES = ["1", "true", "0", "false"]
ACTIVE_PARAMETER = OpenApiParameter(
    "active", enum=ACTIVE_VALUES, description="1: only those in force (unexpired, unrevoked)."
)
ID_MAX = 2**63 - 1


def _active(request) -> bool:
    return choice_param(request, "active", ACTIVE_VALUES) in ("1", "true")


# -- serializers -------------------------------------------------------------------------


class WaiverOut(serializers.ModelSerializer):
    granted_by = serializers.CharField(source="granted_by.username")
    revoked_by = serializers.CharField(source="revoked_by.username", allow_null=True, default=None)
    active = serializers.SerializerMethodField()

    class Meta:
        model = Waiver
        fields = [
            "id",
            "rule",
            "subject_type",
            "subject_id",
            "subject_label",
            "reason",
            "expires_at",
            "active",
            "granted_by",
            "granted_at",
            "revoked_by",
            "revoked_at",
        ]

    def get_active(self, waiver: Waiver) -> bool:
        return waiver.revoked_at is None and waiver.expires_at > timezone.now()


class WaiverIn(StrictSerializer):
    rule = serializers.ChoiceField(choices=RULE_KEYS)
    subject_type = serializers.ChoiceField(choices=[t.value for t in WAIVABLE])
    subject_id = JSONIntegerField(min_value=1, max_value=ID_MAX)
    reason = serializers.CharField(max_length=MAX_TEXT)
    expires_at = serializers.DateTimeField(help_text="ISO 8601; in the future, at most 366 days.")


class RevokeIn(StrictSerializer):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_TEXT, default=""
    )


class HoldOut(serializers.ModelSerializer):
    dataset_version = serializers.SerializerMethodField()
    placed_by = serializers.CharField(source="placed_by.username")
    released_by = serializers.CharField(
        source="released_by.username", allow_null=True, default=None
    )
    active = serializers.SerializerMethodField()

    class Meta:
        model = ErasureHold
        fields = [
            "id",
            "dataset_version_id",
            "dataset_version",
            "reference",
            "reason",
            "active",
            "placed_by",
            "placed_at",
            "released_by",
            "released_at",
        ]

    def get_dataset_version(self, hold: ErasureHold) -> str:
        version = hold.dataset_version
        return f"{version.dataset.slug} v{version.number}"

    def get_active(self, hold: ErasureHold) -> bool:
        return hold.released_at is None


class HoldIn(StrictSerializer):
    dataset_version_id = JSONIntegerField(min_value=1, max_value=ID_MAX)
    reference = serializers.CharField(max_length=200, help_text="The erasure request it holds for.")
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_TEXT, default=""
    )


# -- waivers -----------------------------------------------------------------------------


class WaiverListGrant(generics.GenericAPIView):
    serializer_class = WaiverOut

    @extend_schema(parameters=[ACTIVE_PARAMETER], responses=WaiverOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        rows = (
            selectors.active_waivers_of(project)
            if _active(request)
            else selectors.waivers_of(project)
        )
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(WaiverOut(page, many=True).data)

    @idempotent
    @extend_schema(
        request=WaiverIn,
        responses={201: WaiverOut},
        description="Waive one rule for one subject (dataset version, job, model version, "
        "deployment) until `expires_at`: compliance officers only.",
    )
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.REVIEW)
        body = WaiverIn(data=request.data)
        body.is_valid(raise_exception=True)
        waiver = waiver_grant(project=project, actor=request.user, **body.validated_data)
        return Response(WaiverOut(waiver).data, status=status.HTTP_201_CREATED)


def _waiver_or_404(project, waiver_id: int) -> Waiver:
    waiver = selectors.waiver_in(project, waiver_id)
    if waiver is None:
        raise exceptions.NotFound(f"waiver {waiver_id} not found in this project")
    return waiver


class WaiverRevoke(APIView):
    @extend_schema(request=RevokeIn, responses=WaiverOut)
    def post(self, request, project_id: int, waiver_id: int):
        """End a waiver now (compliance officers): the rule applies to its subject again."""
        project = project_or_404(request, project_id, Action.REVIEW)
        waiver = _waiver_or_404(project, waiver_id)
        body = RevokeIn(data=request.data)
        body.is_valid(raise_exception=True)
        waiver = waiver_revoke(waiver=waiver, actor=request.user, **body.validated_data)
        return Response(WaiverOut(selectors.waiver_in(project, waiver.pk)).data)


# -- erasure holds -----------------------------------------------------------------------


class HoldListPlace(generics.GenericAPIView):
    serializer_class = HoldOut

    @extend_schema(parameters=[ACTIVE_PARAMETER], responses=HoldOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(selectors.holds_of(project, active=_active(request)))
        return self.get_paginated_response(HoldOut(page, many=True).data)

    @idempotent
    @extend_schema(
        request=HoldIn,
        responses={201: HoldOut},
        description="Mark an approved erasure as pending on a dataset version: no training "
        "on it (or what derives from it) and no promotion of models trained on it until "
        "released (rule 4).",
    )
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.REVIEW)
        body = HoldIn(data=request.data)
        body.is_valid(raise_exception=True)
        hold = hold_place(project=project, actor=request.user, **body.validated_data)
        return Response(
            HoldOut(selectors.hold_in(project, hold.pk)).data, status=status.HTTP_201_CREATED
        )


class HoldRelease(APIView):
    @extend_schema(request=None, responses=HoldOut)
    def post(self, request, project_id: int, hold_id: int):
        """The erasure finished: the version may be trained on again."""
        project = project_or_404(request, project_id, Action.REVIEW)
        hold = selectors.hold_in(project, hold_id)
        if hold is None:
            raise exceptions.NotFound(f"erasure hold {hold_id} not found in this project")
        hold = hold_release(hold=hold, actor=request.user)
        return Response(HoldOut(selectors.hold_in(project, hold.pk)).data)


_PROJECT = "projects/<int:project_id>/"
urlpatterns = [
    path(f"{_PROJECT}waivers/", WaiverListGrant.as_view(), name="api-waivers"),
    path(
        f"{_PROJECT}waivers/<int:waiver_id>/revoke/",
        WaiverRevoke.as_view(),
        name="api-waiver-revoke",
    ),
    path(f"{_PROJECT}erasure-holds/", HoldListPlace.as_view(), name="api-erasure-holds"),
    path(
        f"{_PROJECT}erasure-holds/<int:hold_id>/release/",
        HoldRelease.as_view(),
        name="api-erasure-hold-release",
    ),
]
