"""GET /api/v1/: where a client (or a person with a browser) starts.

The entry points as absolute URLs, plus the schema and the docs. Resources inside a
project or an organisation are URI templates (RFC 6570 level 1: `{project_id}`, `{slug}`)
made from the URL table itself, so a route that moves cannot leave a stale link here.

JSON for clients; a browser (Accept: text/html) gets the same listing as a page with
links. Errors stay in the API's JSON shape whatever the Accept header.
"""

from __future__ import annotations

from django.urls import get_resolver, get_script_prefix, reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer, TemplateHTMLRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

API_VERSION = "v1"

# Collections a caller can list without knowing an id.
TOP_LEVEL = {
    "projects": "api-projects",
    "orgs": "api-orgs",
    "tokens": "api-tokens",
}
# Resources of one project, by route name: their URL needs the project's id.
PROJECT_RESOURCES = {
    "project": "api-project",
    "members": "api-members",
    "uploads": "api-uploads",
    "datasets": "api-datasets",
    "jobs": "api-jobs",
    "models": "api-models",
    "promotion_requests": "api-promotion-requests",
    "deployments": "api-deployments",
    "subject_requests": "api-subject-requests",
    "violations": "api-violations",
    "budget": "api-finops-budget",
    "audit": "api-audit",
    "audit_verify": "api-audit-verify",
    "audit_export": "api-audit-export",
}
# Resources of one organisation, by route name: their URL needs its slug.
ORG_RESOURCES = {
    "org": "api-org",
    "members": "api-org-members",
    "projects": "api-org-projects",
    "usage": "api-org-usage",
    "cost": "api-org-cost",
    "rate_card": "api-finops-rate-card",
}


def url_template(request, route_name: str) -> str:
    """The absolute URL of a route with its parameters left as `{name}` placeholders."""
    possibilities = get_resolver().reverse_dict.getlist(route_name)
    if not possibilities:
        raise LookupError(f"no route named {route_name!r}")
    (pattern, params), *_rest = possibilities[0][0]
    path = pattern % {param: f"{{{param}}}" for param in params}
    # Appended after building the base: build_absolute_uri would percent-encode the braces.
    return request.build_absolute_uri(get_script_prefix()) + path


def api_index(request) -> dict:
    def absolute(name: str) -> str:
        return request.build_absolute_uri(reverse(name))

    return {
        "version": API_VERSION,
        "schema": absolute("api-schema"),
        "docs": absolute("api-docs"),
        **{key: absolute(name) for key, name in TOP_LEVEL.items()},
        "project_resources": {
            key: url_template(request, name) for key, name in PROJECT_RESOURCES.items()
        },
        "org_resources": {key: url_template(request, name) for key, name in ORG_RESOURCES.items()},
    }


class ApiRootHTMLRenderer(TemplateHTMLRenderer):
    """The listing as a page for a browser; errors fall back to the JSON error shape."""

    template_name = "api/api_root.html"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        response = (renderer_context or {}).get("response")
        if response is not None and response.exception:
            response["Content-Type"] = "application/json"
            return JSONRenderer().render(data, "application/json", renderer_context)
        return super().render({"index": data}, accepted_media_type, renderer_context)


class ApiRootOut(serializers.Serializer):
    version = serializers.CharField()
    schema = serializers.URLField()
    docs = serializers.URLField()
    projects = serializers.URLField()
    orgs = serializers.URLField()
    tokens = serializers.URLField()
    project_resources = serializers.DictField(child=serializers.CharField())
    org_resources = serializers.DictField(child=serializers.CharField())


class ApiRoot(APIView):
    # JSON first: a client that asks for anything (curl's */*) gets JSON.
    renderer_classes = [JSONRenderer, ApiRootHTMLRenderer]

    @extend_schema(responses=ApiRootOut, summary="The API's entry points")
    def get(self, request):
        return Response(api_index(request))
