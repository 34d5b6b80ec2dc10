"""The `inference` token scope: offered where tokens are made, bounded like every scope
when a token mints one, and worth nothing on the platform's API."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from controlplane.accounts.models import Scope
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    deploy_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db

# The schema and its docs page are public on purpose (docs/architecture.md, "Security").
PUBLIC = {"api-schema", "api-docs"}
METHODS = ("get", "post", "put", "patch", "delete")


def api_paths(values: dict[str, object]) -> list[tuple[str, str]]:
    """(name, path) of every URL under /api/v1/, its parameters filled from `values`."""
    found = []

    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith("api/v1/"):
                path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(values[m.group(1)]), route)
                found.append((pattern.name, "/" + path))

    walk(get_resolver().url_patterns, "")
    return found


def test_an_inference_token_is_refused_by_every_api_endpoint(team, api, deploy):
    from controlplane.accounts.services import api_token_create

    deploy("chat")
    other_token, _raw = api_token_create(user=team.engineer, name="other")
    client = api(team.engineer, scopes=[Scope.INFERENCE])
    values = {
        "project_id": team.project.pk,
        "user_id": team.viewer.pk,
        "token_id": other_token.pk,
        "upload_id": 1,
        "job_id": 1,
        "dataset_id": 1,
        "number": 1,
        "name": "chat",
        "alias": "candidate",
        "request_id": 1,
        "waiver_id": 1,
        "violation_id": 1,
        "hold_id": 1,
        "scan_id": 1,
        "subject_request_id": 1,
        "slug": team.project.organisation.slug,
    }
    paths = [(name, path) for name, path in api_paths(values) if name not in PUBLIC]
    assert any(name == "api-deployments" for name, _path in paths)

    answered = {
        (method, path): getattr(client, method)(path, {}, format="json").status_code
        for _name, path in paths
        for method in METHODS
    }

    assert {key: code for key, code in answered.items() if code != 403} == {}


def test_an_inference_token_may_still_revoke_itself(team, api):
    from rest_framework.test import APIClient

    from controlplane.accounts.services import api_token_create

    token, raw = api_token_create(user=team.engineer, name="leaked", scopes=["inference"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 204


def test_tokens_can_be_made_with_the_inference_scope_through_the_api(team, api):
    response = api(team.engineer, scopes=["tokens:write"]).post(
        "/api/v1/tokens/", {"name": "ci", "scopes": ["inference"]}, format="json"
    )
    # tokens:write alone cannot grant inference: a minted token is bounded by its parent.
    assert response.status_code == 400
    assert "lacks scope 'inference'" in response.json()["error"]["fields"]["scopes"][0]

    parent = api(team.engineer, scopes=["tokens:write", "inference"])
    minted = parent.post("/api/v1/tokens/", {"name": "ci", "scopes": ["inference"]}, format="json")
    assert minted.status_code == 201, minted.content
    assert minted.json()["scopes"] == ["inference"]


def test_the_tokens_page_offers_the_inference_scope(team, client):
    client.force_login(team.engineer)

    page = client.get("/account/tokens/")
    made = client.post(
        "/account/tokens/", {"name": "model client", "scopes": ["inference"], "expires_in_days": 30}
    )

    assert 'value="inference"' in page.content.decode()
    assert made.status_code == 200
    token = team.engineer.api_tokens.get(name="model client")
    assert token.scopes == ["inference"]
