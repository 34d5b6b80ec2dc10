"""Violations and violation scans through the API (routes and roles: api_compliance.py)."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param
from controlplane.policies import selectors
from controlplane.policies.api_compliance import ID_MAX, RULE_KEYS
from controlplane.policies.errors import NotFound as PolicyNotFound
from controlplane.policies.models import PolicyScan, Violation, ViolationComment, ViolationState
from controlplane.policies.rules import RULES
from controlplane.policies.scan import scan_request
from controlplane.policies.violations import MAX_TEXT as MAX_VIOLATION_TEXT
from controlplane.policies.violations import violation_assign, violation_comment, violation_resolve
from controlplane.projects.permissions import Action
from controlplane.projects.selectors import membership_of
from controlplane.registry.serializers import JSONIntegerField


class SubjectOut(serializers.Serializer):
    type = serializers.CharField()
    id = serializers.IntegerField()
    label = serializers.CharField()


class ViolationOut(serializers.ModelSerializer):
    rule_number = serializers.SerializerMethodField()
    rule_title = serializers.SerializerMethodField()
    subject = serializers.SerializerMethodField()
    assignee = serializers.IntegerField(source="assigned_to_id", allow_null=True)
    assignee_name = serializers.CharField(
        source="assigned_to.username", allow_null=True, default=None
    )
    resolved_by = serializers.CharField(
        source="resolved_by.username", allow_null=True, default=None
    )

    class Meta:
        model = Violation
        fields = [
            "id",
            "rule",
            "rule_number",
            "rule_title",
            "subject",
            "reason",
            "fix",
            "policy_version",
            "state",
            "found_at",
            "last_seen_at",
            "assignee",
            "assignee_name",
            "resolved_at",
            "resolved_by",
            "resolution",
        ]

    def get_rule_number(self, violation: Violation) -> int | None:
        rule = RULES.get(violation.rule)
        return rule.number if rule else None

    def get_rule_title(self, violation: Violation) -> str:
        rule = RULES.get(violation.rule)
        return rule.title if rule else violation.rule

    @extend_schema_field(SubjectOut)
    def get_subject(self, violation: Violation) -> dict:
        return {
            "type": violation.subject_type,
            "id": violation.subject_id,
            "label": violation.subject_label,
        }


class ViolationPatch(StrictSerializer):
    assignee = JSONIntegerField(
        min_value=1,
        max_value=ID_MAX,
        allow_null=True,
        help_text="A member's user id; null: nobody.",
    )


class CommentOut(serializers.ModelSerializer):
    author = serializers.CharField(source="author.username")

    class Meta:
        model = ViolationComment
        fields = ["id", "author", "text", "created_at"]


class CommentIn(StrictSerializer):
    text = serializers.CharField(max_length=MAX_VIOLATION_TEXT)


class ResolveIn(StrictSerializer):
    resolution = serializers.CharField(
        max_length=MAX_VIOLATION_TEXT,
        help_text="Why it is resolved (a scan reopens it if the "
        "subject still violates: a fix or a waiver makes it comply).",
    )


class ScanCounts(serializers.Serializer):
    dataset_versions = serializers.IntegerField(required=False)
    model_versions = serializers.IntegerField(required=False)
    deployments = serializers.IntegerField(required=False)
    jobs = serializers.IntegerField(required=False)
    opened = serializers.IntegerField(required=False)
    still_open = serializers.IntegerField(required=False)
    resolved = serializers.IntegerField(required=False)
    waived = serializers.IntegerField(required=False)
    seconds = serializers.FloatField(required=False)


class ScanOut(serializers.ModelSerializer):
    project_id = serializers.IntegerField(allow_null=True)
    requested_by = serializers.CharField(
        source="requested_by.username", allow_null=True, default=None
    )
    counts = ScanCounts()

    class Meta:
        model = PolicyScan
        fields = [
            "id",
            "project_id",
            "state",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "counts",
            "error",
        ]


# -- violations --------------------------------------------------------------------------


def _violation_or_404(request, project_id: int, violation_id: int, action=Action.VIEW):
    project = project_or_404(request, project_id, action)
    violation = selectors.violation_in(project, violation_id)
    if violation is None:
        raise exceptions.NotFound(f"violation {violation_id} not found in this project")
    return violation


class ViolationList(generics.GenericAPIView):
    serializer_class = ViolationOut

    @extend_schema(
        parameters=[
            OpenApiParameter("state", enum=ViolationState.values),
            OpenApiParameter("rule", enum=RULE_KEYS),
        ],
        responses=ViolationOut(many=True),
    )
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        state = choice_param(request, "state", ViolationState.values)
        rule = choice_param(request, "rule", RULE_KEYS)
        page = self.paginate_queryset(
            selectors.violations_filtered(project, state=state, rule=rule)
        )
        return self.get_paginated_response(ViolationOut(page, many=True).data)


class ViolationDetail(APIView):
    @extend_schema(responses=ViolationOut)
    def get(self, request, project_id: int, violation_id: int):
        return Response(ViolationOut(_violation_or_404(request, project_id, violation_id)).data)

    @extend_schema(request=ViolationPatch, responses=ViolationOut)
    def patch(self, request, project_id: int, violation_id: int):
        """Assign to a member (owners and compliance officers); null unassigns."""
        violation = _violation_or_404(request, project_id, violation_id, Action.REVIEW)
        body = ViolationPatch(data=request.data)
        body.is_valid(raise_exception=True)
        assignee = None
        if body.validated_data["assignee"] is not None:
            membership = membership_of(violation.project, body.validated_data["assignee"])
            if membership is None:
                raise PolicyNotFound(
                    "that user is not a member of this project",
                    fields={"assignee": ["not a member"]},
                )
            assignee = membership.user
        violation = violation_assign(violation=violation, actor=request.user, assignee=assignee)
        return Response(ViolationOut(selectors.violation_in(violation.project, violation.pk)).data)


class ViolationComments(generics.GenericAPIView):
    serializer_class = CommentOut

    @extend_schema(responses=CommentOut(many=True))
    def get(self, request, project_id: int, violation_id: int):
        violation = _violation_or_404(request, project_id, violation_id)
        page = self.paginate_queryset(selectors.comments_of(violation))
        return self.get_paginated_response(CommentOut(page, many=True).data)

    @idempotent
    @extend_schema(request=CommentIn, responses={201: CommentOut})
    def post(self, request, project_id: int, violation_id: int):
        """Any member may comment (an engineer explains the fix)."""
        violation = _violation_or_404(request, project_id, violation_id)
        body = CommentIn(data=request.data)
        body.is_valid(raise_exception=True)
        comment = violation_comment(violation=violation, actor=request.user, **body.validated_data)
        return Response(CommentOut(comment).data, status=status.HTTP_201_CREATED)


class ViolationResolve(APIView):
    @extend_schema(request=ResolveIn, responses=ViolationOut)
    def post(self, request, project_id: int, violation_id: int):
        """Resolve by hand, with the reason (owners and compliance officers)."""
        violation = _violation_or_404(request, project_id, violation_id, Action.REVIEW)
        body = ResolveIn(data=request.data)
        body.is_valid(raise_exception=True)
        violation = violation_resolve(
            violation=violation, actor=request.user, **body.validated_data
        )
        return Response(ViolationOut(selectors.violation_in(violation.project, violation.pk)).data)


# -- scans -------------------------------------------------------------------------------


SCAN_DESCRIPTION = (
    "Start a violation scan: the control worker checks every ready dataset version, ready "
    "model version, running deployment and active job against the policy in force, opens "
    "or refreshes violations and resolves those no longer found. 202: the scan, queued; "
    "poll it for its state and counts."
)


class ScanListStart(generics.GenericAPIView):
    serializer_class = ScanOut

    @extend_schema(responses=ScanOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(selectors.scans_of(project))
        return self.get_paginated_response(ScanOut(page, many=True).data)

    @idempotent
    @extend_schema(request=None, responses={202: ScanOut}, description=SCAN_DESCRIPTION)
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.REVIEW)
        scan = scan_request(project=project, actor=request.user)
        return Response(ScanOut(scan).data, status=status.HTTP_202_ACCEPTED)


class ScanDetail(APIView):
    @extend_schema(responses=ScanOut)
    def get(self, request, project_id: int, scan_id: int):
        project = project_or_404(request, project_id)
        scan = selectors.scan_in(project, scan_id)
        if scan is None:
            raise exceptions.NotFound(f"policy scan {scan_id} not found in this project")
        return Response(ScanOut(scan).data)


def _staff_only(request) -> None:
    if not request.user.is_staff:
        raise exceptions.PermissionDenied("scans of every project are for staff")


class PlatformScans(generics.GenericAPIView):
    serializer_class = ScanOut

    @extend_schema(responses=ScanOut(many=True))
    def get(self, request):
        """Every scan, of every project (staff)."""
        _staff_only(request)
        page = self.paginate_queryset(selectors.scans_of(None))
        return self.get_paginated_response(ScanOut(page, many=True).data)

    @idempotent
    @extend_schema(request=None, responses={202: ScanOut}, description=SCAN_DESCRIPTION)
    def post(self, request):
        """Scan every project (staff), as the nightly beat does."""
        _staff_only(request)
        scan = scan_request(project=None, actor=request.user)
        return Response(ScanOut(scan).data, status=status.HTTP_202_ACCEPTED)


_PROJECT = "projects/<int:project_id>/"
urlpatterns = [
    path(f"{_PROJECT}violations/", ViolationList.as_view(), name="api-violations"),
    path(
        f"{_PROJECT}violations/<int:violation_id>/",
        ViolationDetail.as_view(),
        name="api-violation",
    ),
    path(
        f"{_PROJECT}violations/<int:violation_id>/comments/",
        ViolationComments.as_view(),
        name="api-violation-comments",
    ),
    path(
        f"{_PROJECT}violations/<int:violation_id>/resolve/",
        ViolationResolve.as_view(),
        name="api-violation-resolve",
    ),
    path(f"{_PROJECT}policy-scans/", ScanListStart.as_view(), name="api-policy-scans"),
    path(
        f"{_PROJECT}policy-scans/<int:scan_id>/",
        ScanDetail.as_view(),
        name="api-policy-scan",
    ),
    path("policy-scans/", PlatformScans.as_view(), name="api-platform-policy-scans"),
]
