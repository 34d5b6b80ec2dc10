"""The policy and its versions through the API.

    GET/PUT /api/v1/projects/<id>/policy/                  the policy in force, an edit
    GET     /api/v1/projects/<id>/policy/versions/[<n>/]   the project's own history
    GET/PUT /api/v1/orgs/<slug>/policy/                    an organisation's default (admins edit)
    GET     /api/v1/orgs/<slug>/policy/versions/[<n>/]
    GET/PUT /api/v1/policy/default/                        the platform default (staff edit)
    GET     /api/v1/policy/default/versions/[<n>/]

A project follows its organisation's default until its first edit, an organisation the
platform default until its first. Every member reads a project's policy; owners and
compliance officers edit it; every member of an organisation reads its default. An edit
names the version it was made on (`base_version`, 0 while the project follows the
default): when another edit landed since, the answer is 409 and nothing is written.
Bad parameters are 400 with the field named (`rules.licences.allowed_licences.0`).
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, org_or_404, project_or_404
from controlplane.policies import selectors, services
from controlplane.policies.models import PolicyVersion
from controlplane.policies.rules import RULES
from controlplane.projects.permissions import Action
from controlplane.registry.serializers import JSONIntegerField

MAX_VERSION = 2**31 - 1

# -- serializers -------------------------------------------------------------------------


class ParamOut(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()
    help = serializers.CharField()
    default = serializers.JSONField()
    choices = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="The values the parameter takes, when it is one of a few.",
    )


class RuleOut(serializers.Serializer):
    key = serializers.CharField()
    number = serializers.IntegerField()
    title = serializers.CharField()
    explanation = serializers.CharField()
    gates = serializers.ListField(child=serializers.CharField())
    params = ParamOut(many=True)


class PolicyOut(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=["project", "org", "platform"],
        help_text="Whose policy is in force: the project's own, its organisation's default, "
        "or the platform default.",
    )
    version = serializers.IntegerField(
        help_text="The version an edit names as base_version (0: not edited yet)."
    )
    label = serializers.CharField(help_text="The version decisions record: 'project v3'.")
    rules = serializers.DictField(
        child=serializers.DictField(), help_text="{rule: {enabled, parameter: value}}"
    )
    catalogue = RuleOut(many=True)


class PolicyVersionOut(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True)
    rules = serializers.JSONField()
    diff = serializers.JSONField(help_text="{rule: {parameter: {before, after}}}")

    class Meta:
        model = PolicyVersion
        fields = ["number", "reason", "diff", "rules", "created_by", "created_at"]


class PolicyIn(StrictSerializer):
    base_version = JSONIntegerField(
        min_value=0,
        max_value=MAX_VERSION,
        help_text="The version you edited (`version` of the GET); 0 for a policy not yet edited.",
    )
    reason = serializers.CharField(max_length=services.MAX_REASON, help_text="Why it changes.")
    rules = serializers.DictField(
        child=serializers.DictField(),
        help_text="The changes, any subset: {rule: {parameter: value}}, e.g. "
        '{"licences": {"enabled": true, "allowed_licences": ["MIT"]}}.',
    )


# -- helpers -----------------------------------------------------------------------------


def catalogue() -> list[dict[str, Any]]:
    return [
        {
            "key": rule.key.value,
            "number": rule.number,
            "title": rule.title,
            "explanation": rule.explanation,
            "gates": sorted(gate.value for gate in rule.gates),
            "params": [
                {
                    "name": p.name,
                    "label": p.label,
                    "help": p.help,
                    "default": p.default,
                    **({"choices": list(p.choices)} if p.choices else {}),
                }
                for p in rule.params
            ],
        }
        for rule in RULES.values()
    ]


def policy_body(scope_object) -> dict[str, Any]:
    """The policy in force for a project, an organisation, or (None) the platform."""
    snapshot = selectors.policy_in_force(scope_object)
    version = selectors.current_number(scope_object)
    scope = snapshot.label.split(" ", 1)[0]  # "org v2" -> "org"
    return PolicyOut(
        {
            "scope": scope,
            "version": version,
            "label": snapshot.label,
            "rules": snapshot.rules,
            "catalogue": catalogue(),
        }
    ).data


def _update(request, project, organisation=None) -> Response:
    body = PolicyIn(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    # PolicyError (400 with the field, 403, 409) is answered by the API's error handler.
    services.policy_update(
        project=project,
        organisation=organisation,
        actor=request.user,
        changes=data["rules"],
        reason=data["reason"],
        base_version=data["base_version"],
    )
    return Response(policy_body(project if project is not None else organisation))


def _version_or_404(project, number: int) -> PolicyVersion:
    found = selectors.policy_version(project, number)
    if found is None:
        raise exceptions.NotFound(f"the policy has no version {number}")
    return found


# -- a project's policy ------------------------------------------------------------------


class ProjectPolicy(APIView):
    @extend_schema(responses=PolicyOut)
    def get(self, request, project_id: int):
        """The policy in force: the project's own, or the platform default it follows."""
        return Response(policy_body(project_or_404(request, project_id)))

    @extend_schema(request=PolicyIn, responses=PolicyOut)
    def put(self, request, project_id: int):
        """Change some rules (owners and compliance officers): a new version. The first
        edit makes the project's own policy, starting from the default."""
        return _update(request, project_or_404(request, project_id, Action.REVIEW))


class ProjectPolicyVersions(generics.GenericAPIView):
    serializer_class = PolicyVersionOut

    @extend_schema(responses=PolicyVersionOut(many=True))
    def get(self, request, project_id: int):
        """The project's own versions, newest first (empty while it follows the default)."""
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(selectors.policy_versions(project))
        return self.get_paginated_response(PolicyVersionOut(page, many=True).data)


class ProjectPolicyVersion(APIView):
    @extend_schema(responses=PolicyVersionOut)
    def get(self, request, project_id: int, number: int):
        project = project_or_404(request, project_id)
        return Response(PolicyVersionOut(_version_or_404(project, number)).data)


# -- an organisation's default -----------------------------------------------------------


class OrgPolicy(APIView):
    @extend_schema(responses=PolicyOut)
    def get(self, request, slug: str):
        """The default the organisation's projects follow: its own, or the platform's."""
        return Response(policy_body(org_or_404(request, slug)))

    @extend_schema(request=PolicyIn, responses=PolicyOut)
    def put(self, request, slug: str):
        """Change some rules (the organisation's admins): a new version. The first edit
        makes the organisation's own default, starting from the platform's."""
        return _update(request, None, org_or_404(request, slug, admin=True))


class OrgPolicyVersions(generics.GenericAPIView):
    serializer_class = PolicyVersionOut

    @extend_schema(responses=PolicyVersionOut(many=True))
    def get(self, request, slug: str):
        """The organisation's own versions, newest first (empty while it follows the
        platform default)."""
        page = self.paginate_queryset(selectors.policy_versions(org_or_404(request, slug)))
        return self.get_paginated_response(PolicyVersionOut(page, many=True).data)


class OrgPolicyVersion(APIView):
    @extend_schema(responses=PolicyVersionOut)
    def get(self, request, slug: str, number: int):
        org = org_or_404(request, slug)
        return Response(PolicyVersionOut(_version_or_404(org, number)).data)


# -- the platform default ----------------------------------------------------------------


class DefaultPolicy(APIView):
    @extend_schema(responses=PolicyOut)
    def get(self, request):
        """The platform default every project without a policy of its own follows."""
        return Response(policy_body(None))

    @extend_schema(request=PolicyIn, responses=PolicyOut)
    def put(self, request):
        """Change the platform default (staff only)."""
        if not request.user.is_staff:
            raise exceptions.PermissionDenied("only platform staff edit the default policy")
        return _update(request, None)


class DefaultPolicyVersions(generics.GenericAPIView):
    serializer_class = PolicyVersionOut

    @extend_schema(responses=PolicyVersionOut(many=True))
    def get(self, request):
        page = self.paginate_queryset(selectors.policy_versions(None))
        return self.get_paginated_response(PolicyVersionOut(page, many=True).data)


class DefaultPolicyVersion(APIView):
    @extend_schema(responses=PolicyVersionOut)
    def get(self, request, number: int):
        return Response(PolicyVersionOut(_version_or_404(None, number)).data)


PROJECT = "projects/<int:project_id>/policy/"
ORG = "orgs/<slug:slug>/policy/"

urlpatterns = [
    path(PROJECT, ProjectPolicy.as_view(), name="api-policy"),
    path(PROJECT + "versions/", ProjectPolicyVersions.as_view(), name="api-policy-versions"),
    path(
        PROJECT + "versions/<int:number>/",
        ProjectPolicyVersion.as_view(),
        name="api-policy-version",
    ),
    path(ORG, OrgPolicy.as_view(), name="api-org-policy"),
    path(ORG + "versions/", OrgPolicyVersions.as_view(), name="api-org-policy-versions"),
    path(
        ORG + "versions/<int:number>/",
        OrgPolicyVersion.as_view(),
        name="api-org-policy-version",
    ),
    path("policy/default/", DefaultPolicy.as_view(), name="api-policy-default"),
    path(
        "policy/default/versions/",
        DefaultPolicyVersions.as_view(),
        name="api-policy-default-versions",
    ),
    path(
        "policy/default/versions/<int:number>/",
        DefaultPolicyVersion.as_view(),
        name="api-policy-default-version",
    ),
]
