from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, org_or_404, project_or_404
from controlplane.api.errors import Conflict
from controlplane.api.idempotency import idempotent
from controlplane.names import validate_name
from controlplane.orgs.selectors import (
    OrgChoiceNeeded,
    OrgForbidden,
    OrgNotFound,
    org_for_new_project,
)
from controlplane.projects.models import Membership, Project, Role, slug_validator
from controlplane.projects.permissions import Action
from controlplane.projects.selectors import (
    active_user_named,
    members_of,
    membership_of,
    project_list_for,
    role_of,
)
from controlplane.projects.services import (
    MembershipError,
    member_add,
    member_change_role,
    member_remove,
    project_create,
    project_update,
)
from controlplane.subject_keys import subject_key_rotate, subject_key_state


class ProjectOut(serializers.ModelSerializer):
    organisation = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    # Annotated by project_list_for (views serialize only projects fetched through it).
    member_count = serializers.IntegerField(read_only=True)
    job_count = serializers.IntegerField(read_only=True)
    running_job_count = serializers.IntegerField(read_only=True)
    my_role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = [
            "id",
            "organisation",
            "name",
            "slug",
            "description",
            "created_at",
            "member_count",
            "job_count",
            "running_job_count",
            "my_role",
        ]

    def get_my_role(self, project) -> str | None:
        if hasattr(project, "my_role"):  # annotated by project_list_for: no query per row
            return project.my_role
        return role_of(self.context["request"].user, project)


def with_counts(request, project: Project) -> Project:
    """The project as the list shows it: its counts annotated (never null) and the role."""
    return project_list_for(request.user).get(pk=project.pk)


class ProjectIn(StrictSerializer):
    name = serializers.CharField(max_length=120, validators=[validate_name])
    slug = serializers.CharField(max_length=63, validators=[slug_validator])
    description = serializers.CharField(required=False, allow_blank=True, default="")
    organisation = serializers.CharField(
        max_length=63,
        required=False,
        help_text="The organisation's slug; required when you are in several.",
    )


class ProjectPatch(StrictSerializer):
    name = serializers.CharField(max_length=120, required=False, validators=[validate_name])
    description = serializers.CharField(required=False, allow_blank=True)


class ProjectListCreate(generics.GenericAPIView):
    serializer_class = ProjectOut

    def get_queryset(self):
        slug = self.request.query_params.get("org")
        org = org_or_404(self.request, slug) if slug else None
        return project_list_for(self.request.user, org).order_by("name", "id")

    @extend_schema(
        parameters=[OpenApiParameter("org", str, description="only this organisation's (slug)")],
        responses=ProjectOut(many=True),
    )
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        data = ProjectOut(page, many=True, context={"request": request}).data
        return self.get_paginated_response(data)

    @idempotent
    @extend_schema(request=ProjectIn, responses={201: ProjectOut})
    def post(self, request):
        """Create a project (you become its owner) in `organisation`; without one, in your
        only organisation."""
        body = ProjectIn(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        try:
            org = org_for_new_project(request.user, fields.pop("organisation", None))
        except OrgNotFound as error:
            raise exceptions.NotFound(str(error)) from None
        except OrgForbidden as error:
            raise exceptions.PermissionDenied(str(error)) from None
        except OrgChoiceNeeded as error:
            raise serializers.ValidationError({"organisation": [str(error)]}) from None
        try:
            project = project_create(actor=request.user, organisation=org, **fields)
        except MembershipError as error:
            raise Conflict(str(error)) from None
        data = ProjectOut(with_counts(request, project), context={"request": request}).data
        return Response(data, status=status.HTTP_201_CREATED)


class ProjectDetail(APIView):
    @extend_schema(responses=ProjectOut)
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        return Response(
            ProjectOut(with_counts(request, project), context={"request": request}).data
        )

    @extend_schema(request=ProjectPatch, responses=ProjectOut)
    def patch(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.MANAGE)
        body = ProjectPatch(data=request.data)
        body.is_valid(raise_exception=True)
        project = project_update(project=project, actor=request.user, **body.validated_data)
        return Response(
            ProjectOut(with_counts(request, project), context={"request": request}).data
        )


class MemberOut(serializers.ModelSerializer):
    user_id = serializers.IntegerField(source="user.id")
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["user_id", "username", "role", "created_at"]


class MemberIn(StrictSerializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class MemberPatch(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class MemberListCreate(generics.GenericAPIView):
    serializer_class = MemberOut

    @extend_schema(responses=MemberOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(members_of(project))
        return self.get_paginated_response(MemberOut(page, many=True).data)

    @extend_schema(request=MemberIn, responses={201: MemberOut})
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.MANAGE)
        body = MemberIn(data=request.data)
        body.is_valid(raise_exception=True)
        user = active_user_named(body.validated_data["username"])
        if user is None:
            raise serializers.ValidationError({"username": ["no active user with this name"]})
        try:
            membership = member_add(
                project=project, user=user, role=body.validated_data["role"], actor=request.user
            )
        except MembershipError as error:
            raise Conflict(str(error)) from None
        return Response(MemberOut(membership).data, status=status.HTTP_201_CREATED)


class MemberDetail(APIView):
    def _membership(self, request, project_id: int, user_id: int, action: Action) -> Membership:
        project = project_or_404(request, project_id, action)
        membership = membership_of(project, user_id)
        if membership is None:
            raise exceptions.NotFound(f"user {user_id} is not a member of this project")
        return membership

    @extend_schema(request=MemberPatch, responses=MemberOut)
    def patch(self, request, project_id: int, user_id: int):
        membership = self._membership(request, project_id, user_id, Action.MANAGE)
        body = MemberPatch(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            membership = member_change_role(
                membership=membership, role=body.validated_data["role"], actor=request.user
            )
        except MembershipError as error:
            raise Conflict(str(error)) from None
        return Response(MemberOut(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request, project_id: int, user_id: int):
        membership = self._membership(request, project_id, user_id, Action.MANAGE)
        try:
            member_remove(membership=membership, actor=request.user)
        except MembershipError as error:
            raise Conflict(str(error)) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class SubjectKeyOut(serializers.Serializer):
    generation = serializers.IntegerField()
    key_id = serializers.CharField(help_text="fingerprint of the current key (never the key)")
    older_key_ids = serializers.ListField(
        child=serializers.CharField(),
        help_text="the earlier generations' fingerprints, newest first",
    )


class SubjectKeyRotateIn(StrictSerializer):
    pass


class SubjectKeyDetail(APIView):
    """The project's data-subject key generation (owners and compliance officers)."""

    @extend_schema(responses=SubjectKeyOut)
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.REVIEW)
        return Response(SubjectKeyOut(subject_key_state(project)).data)


class SubjectKeyRotate(APIView):
    """Start the next key generation; then re-run the data pipeline on subject datasets."""

    @extend_schema(request=SubjectKeyRotateIn, responses=SubjectKeyOut)
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.REVIEW)
        SubjectKeyRotateIn(data=request.data).is_valid(raise_exception=True)
        project = subject_key_rotate(project=project, actor=request.user)
        return Response(SubjectKeyOut(subject_key_state(project)).data)
