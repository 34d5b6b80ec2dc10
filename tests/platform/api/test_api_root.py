"""GET /api/v1/: the entry points, as absolute URLs that answer."""

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_root_lists_entry_points_as_absolute_urls_that_work(api, team):
    client = api(team.engineer)
    response = client.get("/api/v1/")
    assert response.status_code == 200
    index = response.json()
    assert index["docs"] == "http://testserver/api/v1/docs/"
    assert index["schema"] == "http://testserver/api/v1/schema/"
    for key in ("projects", "orgs", "tokens"):
        assert index[key].startswith("http://testserver/api/v1/")
        assert client.get(index[key]).status_code == 200, key
    jobs = index["project_resources"]["jobs"]
    assert jobs == "http://testserver/api/v1/projects/{project_id}/jobs/"
    filled = jobs.replace("{project_id}", str(team.project.pk))
    assert client.get(filled).status_code == 200
    org = index["org_resources"]["projects"].replace("{slug}", team.project.organisation.slug)
    assert client.get(org).status_code == 200


def test_every_listed_project_resource_resolves_for_a_member(api, team):
    client = api(team.owner)
    index = client.get("/api/v1/").json()
    for name, template in index["project_resources"].items():
        url = template.replace("{project_id}", str(team.project.pk))
        assert "{" not in url, name
        assert client.get(url).status_code in (200, 405), name


def test_root_needs_authentication(api):
    response = api().get("/api/v1/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_browser_gets_the_listing_as_a_page_with_links(client, team):
    client.force_login(team.viewer)
    response = client.get("/api/v1/", HTTP_ACCEPT="text/html,application/xhtml+xml")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert 'href="http://testserver/api/v1/docs/"' in page
    assert "http://testserver/api/v1/projects/{project_id}/jobs/" in page


def test_browser_without_a_session_gets_the_json_error(client):
    response = client.get("/api/v1/", HTTP_ACCEPT="text/html")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] == "not_authenticated"


def test_tokens_page_links_to_the_api_root(client, team):
    client.force_login(team.viewer)
    page = client.get(reverse("token-list")).content.decode()
    assert f'href="{reverse("api-root")}"' in page
