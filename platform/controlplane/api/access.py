"""Role checks for API views: map the selectors' errors to 404/403."""

from __future__ import annotations

from rest_framework import exceptions, serializers

from controlplane.api import schema  # noqa: F401 - registers StrictSerializer's schema
from controlplane.projects.permissions import Action
from controlplane.projects.selectors import ProjectForbidden, ProjectNotFound, project_for


def project_or_404(request, project_id, action: Action = Action.VIEW):
    try:
        project, _role = project_for(request.user, project_id, action)
    except ProjectNotFound as error:
        raise exceptions.NotFound(str(error)) from None
    except ProjectForbidden as error:
        raise exceptions.PermissionDenied(str(error)) from None
    return project


def org_or_404(request, slug: str, *, admin: bool = False):
    """The organisation named by ``slug``: 404 for a non-member, 403 for a member who is
    not its admin when ``admin`` is asked."""
    from controlplane.orgs.selectors import OrgForbidden, OrgNotFound, org_for

    try:
        org, _role = org_for(request.user, slug, admin=admin)
    except OrgNotFound as error:
        raise exceptions.NotFound(str(error)) from None
    except OrgForbidden as error:
        raise exceptions.PermissionDenied(str(error)) from None
    return org


class StrictSerializer(serializers.Serializer):
    """Unknown fields are an error, not silently dropped: a typo must not go unnoticed."""

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["expected a JSON object"]})
        unknown = set(data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in sorted(unknown)})
        return super().to_internal_value(data)
