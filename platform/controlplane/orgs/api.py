"""Organisations through the API.

    GET/POST      /api/v1/orgs/                           the caller's organisations, create one
    GET/PATCH     /api/v1/orgs/<slug>/                    one organisation, its settings (admins)
    GET/POST      /api/v1/orgs/<slug>/members/            members, add one by username (admins)
    PATCH/DELETE  /api/v1/orgs/<slug>/members/<user_id>/  change a role, remove (admins)
    GET           /api/v1/orgs/<slug>/projects/           the projects of it the caller may open

An organisation the caller is not in answers 404 (it does not exist for them); a member
who is not an admin gets 403 on a change. The last admin can be neither demoted nor
removed (409, saying so).
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, org_or_404
from controlplane.api.errors import Conflict
from controlplane.api.idempotency import idempotent
from controlplane.names import validate_name
from controlplane.orgs.models import Organisation, OrgMembership, OrgRole
from controlplane.orgs.selectors import (
    org_members,
    org_membership_of,
    org_role_of,
    orgs_of,
)
from controlplane.orgs.services import (
    OrgError,
    org_create,
    org_member_add,
    org_member_change_role,
    org_member_remove,
    org_update,
)
from controlplane.projects.api import ProjectOut
from controlplane.projects.models import slug_validator
from controlplane.projects.selectors import active_user_named, project_list_for


class OrgOut(serializers.ModelSerializer):
    my_role = serializers.SerializerMethodField()

    class Meta:
        model = Organisation
        fields = [
            "slug",
            "name",
            "description",
            "members_create_projects",
            "my_role",
            "created_at",
        ]

    def get_my_role(self, org) -> str | None:
        return org_role_of(self.context["request"].user, org)


class OrgIn(StrictSerializer):
    name = serializers.CharField(max_length=120, validators=[validate_name])
    slug = serializers.CharField(max_length=63, validators=[slug_validator])
    description = serializers.CharField(required=False, allow_blank=True, default="")


class OrgPatch(StrictSerializer):
    name = serializers.CharField(max_length=120, required=False, validators=[validate_name])
    description = serializers.CharField(required=False, allow_blank=True)
    members_create_projects = serializers.BooleanField(
        required=False, help_text="Whether members (not only admins) create projects."
    )


class OrgMemberOut(serializers.ModelSerializer):
    user_id = serializers.IntegerField(source="user.id")
    username = serializers.CharField(source="user.username")

    class Meta:
        model = OrgMembership
        fields = ["user_id", "username", "role", "created_at"]


class OrgMemberIn(StrictSerializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=OrgRole.choices)


class OrgMemberPatch(StrictSerializer):
    role = serializers.ChoiceField(choices=OrgRole.choices)


class OrgListCreate(generics.GenericAPIView):
    serializer_class = OrgOut

    @extend_schema(responses=OrgOut(many=True))
    def get(self, request):
        page = self.paginate_queryset(orgs_of(request.user).order_by("name", "id"))
        return self.get_paginated_response(
            OrgOut(page, many=True, context={"request": request}).data
        )

    @idempotent
    @extend_schema(request=OrgIn, responses={201: OrgOut})
    def post(self, request):
        """Create an organisation; the caller becomes its admin."""
        body = OrgIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            org = org_create(actor=request.user, **body.validated_data)
        except OrgError as error:
            raise Conflict(str(error)) from None
        return Response(
            OrgOut(org, context={"request": request}).data, status=status.HTTP_201_CREATED
        )


class OrgDetail(APIView):
    @extend_schema(responses=OrgOut)
    def get(self, request, slug: str):
        org = org_or_404(request, slug)
        return Response(OrgOut(org, context={"request": request}).data)

    @extend_schema(request=OrgPatch, responses=OrgOut)
    def patch(self, request, slug: str):
        org = org_or_404(request, slug, admin=True)
        body = OrgPatch(data=request.data)
        body.is_valid(raise_exception=True)
        org = org_update(org=org, actor=request.user, **body.validated_data)
        return Response(OrgOut(org, context={"request": request}).data)


class OrgMemberListCreate(generics.GenericAPIView):
    serializer_class = OrgMemberOut

    @extend_schema(responses=OrgMemberOut(many=True))
    def get(self, request, slug: str):
        org = org_or_404(request, slug)
        page = self.paginate_queryset(org_members(org))
        return self.get_paginated_response(OrgMemberOut(page, many=True).data)

    @idempotent
    @extend_schema(request=OrgMemberIn, responses={201: OrgMemberOut})
    def post(self, request, slug: str):
        org = org_or_404(request, slug, admin=True)
        body = OrgMemberIn(data=request.data)
        body.is_valid(raise_exception=True)
        user = active_user_named(body.validated_data["username"])
        if user is None:
            raise serializers.ValidationError({"username": ["no active user with this name"]})
        try:
            membership = org_member_add(
                org=org, user=user, role=body.validated_data["role"], actor=request.user
            )
        except OrgError as error:
            raise Conflict(str(error)) from None
        return Response(OrgMemberOut(membership).data, status=status.HTTP_201_CREATED)


class OrgMemberDetail(APIView):
    def _membership(self, request, slug: str, user_id: int) -> OrgMembership:
        org = org_or_404(request, slug, admin=True)
        membership = org_membership_of(org, user_id)
        if membership is None:
            raise exceptions.NotFound(f"user {user_id} is not a member of this organisation")
        return membership

    @extend_schema(request=OrgMemberPatch, responses=OrgMemberOut)
    def patch(self, request, slug: str, user_id: int):
        membership = self._membership(request, slug, user_id)
        body = OrgMemberPatch(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            membership = org_member_change_role(
                membership=membership, role=body.validated_data["role"], actor=request.user
            )
        except OrgError as error:
            raise Conflict(str(error)) from None
        return Response(OrgMemberOut(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request, slug: str, user_id: int):
        """Remove the member from the organisation and from each of its projects."""
        membership = self._membership(request, slug, user_id)
        try:
            org_member_remove(membership=membership, actor=request.user)
        except OrgError as error:
            raise Conflict(str(error)) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


class OrgProjectList(generics.GenericAPIView):
    serializer_class = ProjectOut

    @extend_schema(responses=ProjectOut(many=True))
    def get(self, request, slug: str):
        """The organisation's projects the caller may open (all of them for staff)."""
        org = org_or_404(request, slug)
        rows = project_list_for(request.user, org).order_by("name", "id")
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(
            ProjectOut(page, many=True, context={"request": request}).data
        )


ORG = "orgs/<slug:slug>/"

urlpatterns = [
    path("orgs/", OrgListCreate.as_view(), name="api-orgs"),
    path(ORG, OrgDetail.as_view(), name="api-org"),
    path(ORG + "members/", OrgMemberListCreate.as_view(), name="api-org-members"),
    path(ORG + "members/<int:user_id>/", OrgMemberDetail.as_view(), name="api-org-member"),
    path(ORG + "projects/", OrgProjectList.as_view(), name="api-org-projects"),
]
