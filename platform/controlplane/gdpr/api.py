"""Data-subject requests through the API.

    GET/POST  /api/v1/projects/<id>/subject-requests/             (?state=)
    GET       /api/v1/projects/<id>/subject-requests/<request>/
    POST      /api/v1/projects/<id>/subject-requests/<request>/approve/
    POST      /api/v1/projects/<id>/subject-requests/<request>/reject/
    POST      /api/v1/projects/<id>/subject-requests/<request>/extend/
    GET       /api/v1/projects/<id>/subject-requests/<request>/export/   (access, once)
    POST      /api/v1/projects/<id>/models/<name>/versions/<n>/retrain/  (gdpr/retrain.py)

Every member reads; owners, engineers and compliance officers file; owners and compliance
officers who did not file a request decide it and extend its deadline; the one who
approved an access request alone downloads its export, once (then 410 Gone:
gdpr/access.py). A request of
scope `organisation` (every project of the project's organisation) is filed by an admin
of the organisation (or staff) and decided, extended and downloaded by another admin of
it; once approved, its `children` (one per project) do the work (gdpr/organisation.py). Identifiers are
shown in clear to owners and compliance officers only, masked to everyone else; every
identifier also carries its keyed hash. A non-member gets 404, like the project itself;
another project's request is 404 too. The services raise GdprError subclasses, answered
here with their status.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.errors import Conflict as ApiConflict
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param
from controlplane.gdpr import selectors, services
from controlplane.gdpr.errors import GdprError
from controlplane.gdpr.identifiers import MAX_IDENTIFIERS, MAX_VALUE
from controlplane.gdpr.models import RequestKind, RequestScope, RequestState, SubjectRequest
from controlplane.registry.serializers import JSONIntegerField


def raise_gdpr_error(error: GdprError):
    if error.fields and error.status == 400:
        raise serializers.ValidationError(error.fields) from None
    classes = {403: exceptions.PermissionDenied, 404: exceptions.NotFound, 409: ApiConflict}
    if error.status in classes:
        raise classes[error.status](str(error)) from None
    exc = exceptions.APIException(str(error), code="invalid")
    exc.status_code = error.status
    raise exc from None


# -- serializers -------------------------------------------------------------------------


class IdentifierIn(StrictSerializer):
    type = serializers.CharField(
        max_length=40, help_text="What the value is: email, customer_id, phone, ..."
    )
    value = serializers.CharField(max_length=MAX_VALUE)


class SubjectRequestIn(StrictSerializer):
    kind = serializers.ChoiceField(
        choices=RequestKind.choices, help_text="erasure (Art. 17) or access (Art. 15)."
    )
    identifiers = serializers.ListField(
        child=IdentifierIn(),
        max_length=MAX_IDENTIFIERS,
        help_text="At least one identifier of the subject (an e-mail and a customer id: "
        "each its own entry). Stored encrypted; audit events hold only their keyed hashes.",
    )
    legal_basis = serializers.CharField(
        max_length=services.MAX_TEXT,
        help_text="The legal basis or reason (must not quote the identifiers).",
    )
    received_at = serializers.DateTimeField(
        required=False,
        help_text="When the request reached you (ISO 8601; not in the future). Default: now. "
        "The deadline is one calendar month later.",
    )
    scope = serializers.ChoiceField(
        choices=RequestScope.choices,
        required=False,
        default=RequestScope.PROJECT,
        help_text="project, or organisation: every project of this project's organisation "
        "(filed by an admin of the organisation; carried out per project once approved).",
    )


class IdentifierOut(serializers.Serializer):
    type = serializers.CharField()
    value = serializers.CharField(help_text="In clear for owners and compliance officers.")
    subject_hash = serializers.CharField(help_text="HMAC-SHA256 with the project's key.")


class RelatedRequestOut(serializers.Serializer):
    id = serializers.IntegerField()
    project = serializers.IntegerField(source="project_id")
    project_name = serializers.CharField(source="project.name")
    state = serializers.CharField()
    deadline_at = serializers.DateTimeField()


class SubjectRequestOut(serializers.ModelSerializer):
    identifiers = serializers.SerializerMethodField()
    parent = serializers.SerializerMethodField(
        help_text="The organisation request this one was fanned out from (null if none)."
    )
    children = serializers.SerializerMethodField(
        help_text="An organisation request's per-project requests (empty for others)."
    )
    filed_by = serializers.CharField(source="filed_by.username")
    reviewed_by = serializers.CharField(
        source="reviewed_by.username", allow_null=True, default=None
    )
    extended_by = serializers.CharField(
        source="extended_by.username", allow_null=True, default=None
    )
    overdue = serializers.SerializerMethodField()
    progress = serializers.JSONField()
    certificate = serializers.JSONField()

    class Meta:
        model = SubjectRequest
        fields = [
            "id",
            "kind",
            "scope",
            "state",
            "identifiers",
            "legal_basis",
            "filed_by",
            "filed_at",
            "received_at",
            "deadline_at",
            "overdue",
            "extension_months",
            "extension_reason",
            "extended_by",
            "extended_at",
            "reviewed_by",
            "reviewed_at",
            "review_reason",
            "started_at",
            "finished_at",
            "failure_reason",
            "progress",
            "certificate",
            "parent",
            "children",
        ]

    @extend_schema_field(IdentifierOut(many=True))
    def get_identifiers(self, request: SubjectRequest) -> list[dict]:
        user = self.context.get("user")
        # An organisation request's admins see it in clear without a project role.
        clear = bool(self.context.get("clear")) or (
            request.is_parent and user is not None and services.may_review_request(user, request)
        )
        return IdentifierOut(selectors.identifiers_shown(request, clear=clear), many=True).data

    @extend_schema_field(RelatedRequestOut(allow_null=True))
    def get_parent(self, request: SubjectRequest) -> dict | None:
        return RelatedRequestOut(request.parent).data if request.parent_id else None

    @extend_schema_field(RelatedRequestOut(many=True))
    def get_children(self, request: SubjectRequest) -> list[dict]:
        return RelatedRequestOut(request.children.all(), many=True).data

    def get_overdue(self, request: SubjectRequest) -> bool:
        return bool(selectors.deadline_of(request)["overdue"])


class ReasonIn(StrictSerializer):
    reason = serializers.CharField(
        max_length=services.MAX_TEXT,
        help_text="Why (recorded in the audit trail; must not quote the identifiers).",
    )


class ExtendIn(StrictSerializer):
    months = JSONIntegerField(
        min_value=1,
        max_value=12,
        help_text="Months to add; at most 2 in total beyond the first (Art. 12(3)).",
    )
    reason = serializers.CharField(
        max_length=services.MAX_TEXT, help_text="Why more time is needed (tell the subject)."
    )


def _out(request, subject_request: SubjectRequest) -> dict:
    clear = services.may_see_identifiers(request.user, subject_request)
    return SubjectRequestOut(subject_request, context={"clear": clear, "user": request.user}).data


# -- views -------------------------------------------------------------------------------


class SubjectRequestListFile(generics.GenericAPIView):
    serializer_class = SubjectRequestOut

    @extend_schema(
        parameters=[OpenApiParameter("state", enum=RequestState.values)],
        responses=SubjectRequestOut(many=True),
    )
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        state = choice_param(request, "state", RequestState.values)
        page = self.paginate_queryset(selectors.requests_of(project, state=state))
        clear = services.may_review(request.user, project)
        return self.get_paginated_response(
            SubjectRequestOut(page, many=True, context={"clear": clear, "user": request.user}).data
        )

    @idempotent
    @extend_schema(
        request=SubjectRequestIn,
        responses={201: SubjectRequestOut},
        description="File a data-subject request (owners, engineers, compliance officers). "
        "It waits for review by an owner or compliance officer who did not file it.",
    )
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id)
        body = SubjectRequestIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            filed = services.request_file(
                project=project, actor=request.user, **body.validated_data
            )
        except GdprError as error:
            raise_gdpr_error(error)
        return Response(
            _out(request, selectors.request_in(project, filed.pk)), status=status.HTTP_201_CREATED
        )


def _request_or_404(request, project_id: int, subject_request_id: int) -> SubjectRequest:
    project = project_or_404(request, project_id)
    found = selectors.request_in(project, subject_request_id)
    if found is None:
        raise exceptions.NotFound(f"subject request {subject_request_id} not found in this project")
    return found


class SubjectRequestDetail(APIView):
    @extend_schema(responses=SubjectRequestOut)
    def get(self, request, project_id: int, subject_request_id: int):
        return Response(_out(request, _request_or_404(request, project_id, subject_request_id)))


class _Decision(APIView):
    decide = None

    @extend_schema(request=ReasonIn, responses=SubjectRequestOut)
    def post(self, request, project_id: int, subject_request_id: int):
        subject_request = _request_or_404(request, project_id, subject_request_id)
        body = ReasonIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            decided = type(self).decide(
                request=subject_request, actor=request.user, reason=body.validated_data["reason"]
            )
        except GdprError as error:
            raise_gdpr_error(error)
        return Response(_out(request, selectors.request_in(decided.project, decided.pk)))


class SubjectRequestApprove(_Decision):
    """Approve (owner or compliance officer, not the filer): the erasure or access job
    may start."""

    decide = staticmethod(services.request_approve)


class SubjectRequestReject(_Decision):
    """Reject (owner or compliance officer, not the filer), with the reason."""

    decide = staticmethod(services.request_reject)


class SubjectRequestExtend(APIView):
    @extend_schema(request=ExtendIn, responses=SubjectRequestOut)
    def post(self, request, project_id: int, subject_request_id: int):
        """Extend the deadline (owners and compliance officers) by up to two months in
        total, with the reason."""
        subject_request = _request_or_404(request, project_id, subject_request_id)
        body = ExtendIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            extended = services.request_extend(
                request=subject_request, actor=request.user, **body.validated_data
            )
        except GdprError as error:
            raise_gdpr_error(error)
        return Response(_out(request, selectors.request_in(extended.project, extended.pk)))


class SubjectRequestExport(APIView):
    @extend_schema(
        summary="Download an access request's export, once (a zip, one JSONL per source)",
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            403: OpenApiResponse(description="not the reviewer who approved the request"),
            409: OpenApiResponse(description="not an access request, or not ready yet"),
            410: OpenApiResponse(description="downloaded once (or expired) and deleted"),
        },
    )
    def get(self, request, project_id: int, subject_request_id: int):
        """An access request's export (a zip, one JSONL per source), for the reviewer who
        approved the request, once: the object is deleted right after; then 410 Gone."""
        from django.http import HttpResponse

        from controlplane.gdpr.access import export_take

        subject_request = _request_or_404(request, project_id, subject_request_id)
        try:
            name, data = export_take(request=subject_request, actor=request.user)
        except GdprError as error:
            raise_gdpr_error(error)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response


class ModelVersionRetrain(APIView):
    @extend_schema(
        request=None,
        responses={
            201: OpenApiResponse(description="the retraining job (as the jobs API shows it)"),
            409: OpenApiResponse(
                description="not flagged, no rewritten data yet, the base model needs "
                "retraining first, or refused by the policy"
            ),
        },
        description="Retrain a model version flagged 'trained on erased data' (owners and "
        "engineers): its source job again, on the version the erasure derived from its data.",
    )
    def post(self, request, project_id: int, name: str, number: int):
        from controlplane.gdpr.retrain import retrain_start
        from controlplane.jobs.api import JobOut
        from controlplane.jobs.requests import JobRequestError
        from controlplane.projects.permissions import Action
        from controlplane.registry.api import version_or_404

        version = version_or_404(request, project_id, name, number, Action.RUN)
        try:
            job = retrain_start(version=version, actor=request.user)
        except GdprError as error:
            raise_gdpr_error(error)
        except JobRequestError as error:
            raise serializers.ValidationError(error.errors) from None
        return Response(JobOut(job).data, status=status.HTTP_201_CREATED)


_REQUESTS = "projects/<int:project_id>/subject-requests/"
_ONE = _REQUESTS + "<int:subject_request_id>/"
urlpatterns = [
    path(_REQUESTS, SubjectRequestListFile.as_view(), name="api-subject-requests"),
    path(_ONE, SubjectRequestDetail.as_view(), name="api-subject-request"),
    path(_ONE + "approve/", SubjectRequestApprove.as_view(), name="api-subject-request-approve"),
    path(_ONE + "reject/", SubjectRequestReject.as_view(), name="api-subject-request-reject"),
    path(_ONE + "extend/", SubjectRequestExtend.as_view(), name="api-subject-request-extend"),
    path(_ONE + "export/", SubjectRequestExport.as_view(), name="api-subject-request-export"),
    path(
        "projects/<int:project_id>/models/<str:name>/versions/<int:number>/retrain/",
        ModelVersionRetrain.as_view(),
        name="api-model-version-retrain",
    ),
]
