"""Bad input gets a clear 4xx in one JSON shape, never a 500, and writes nothing."""

import pytest

pytestmark = pytest.mark.django_db


def test_malformed_json_is_a_400(team, api):
    from controlplane.projects.models import Project

    before = Project.objects.count()
    response = api(team.owner).generic(
        "POST", "/api/v1/projects/", '{"name": "x", "slug":', content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["error"]["message"]
    assert Project.objects.count() == before


def test_unknown_and_mistyped_fields_are_named(team, api):
    client = api(team.owner)
    response = client.post(
        "/api/v1/projects/", {"name": "x", "slug": "ok-slug", "colour": "red"}, format="json"
    )
    assert response.json()["error"]["fields"] == {"colour": ["unknown field"]}
    response = client.post("/api/v1/projects/", {"name": ["x"], "slug": "Bad Slug!"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"name", "slug"}


def test_non_object_body_is_a_400(team, api):
    response = api(team.owner).post("/api/v1/projects/", [1, 2], format="json")
    assert response.status_code == 400


def test_duplicate_slug_is_a_conflict(team, api):
    response = api(team.owner).post(
        "/api/v1/projects/", {"name": "Again", "slug": "alpha"}, format="json"
    )
    assert response.status_code == 409 and "already exists" in response.json()["error"]["message"]


def test_unknown_ids_are_404_with_a_message(team, api):
    client = api(team.owner)
    response = client.get("/api/v1/projects/999999/")
    assert (
        response.status_code == 404
        and response.json()["error"]["message"] == "project 999999 not found"
    )
    assert client.get(f"/api/v1/projects/{team.project.pk}/jobs/424242/").status_code == 404


def test_pagination_and_page_size(team, api):
    from controlplane.projects.services import project_create

    for i in range(5):
        project_create(name=f"P{i}", slug=f"p-{i}", actor=team.owner)
    body = api(team.owner).get("/api/v1/projects/", {"page_size": 2}).json()
    assert body["count"] == 6 and len(body["results"]) == 2 and body["next"]


def test_schema_and_docs_are_served(team, client, api):
    schema = api(team.owner).get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/v1/projects/{project_id}/jobs/" in schema.json()["paths"]
    client.force_login(team.owner)
    assert client.get("/api/v1/docs/").status_code == 200


def test_throttling_answers_429(team, api, settings):
    from django.core.cache import cache
    from rest_framework.settings import api_settings
    from rest_framework.throttling import UserRateThrottle

    cache.clear()
    original = UserRateThrottle.THROTTLE_RATES
    UserRateThrottle.THROTTLE_RATES = {**api_settings.DEFAULT_THROTTLE_RATES, "user": "3/min"}
    try:
        client = api(team.owner)
        codes = [client.get("/api/v1/projects/").status_code for _ in range(5)]
    finally:
        UserRateThrottle.THROTTLE_RATES = original
        cache.clear()
    assert codes[:3] == [200, 200, 200] and codes[-1] == 429
