"""404, 403 and 500 pages with a way back, rendered with DEBUG off as in production."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path, reverse

from controlplane import urls as site_urls

pytestmark = pytest.mark.django_db


def _boom(request):
    raise RuntimeError("an error nobody expected")


# The site's URLs plus a view that raises, so the real handler500 renders the page.
urlpatterns = [path("boom/", _boom), *site_urls.urlpatterns]
handler400 = site_urls.handler400
handler403 = site_urls.handler403
handler404 = site_urls.handler404
handler500 = site_urls.handler500


def test_missing_page_offers_the_way_back_to_a_logged_in_user(client, team, settings):
    settings.DEBUG = False
    client.force_login(team.viewer)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "Not found" in page and "/no/such/page/" in page
    assert f'href="{reverse("overview")}"' in page
    assert f'href="{reverse("project-list")}"' in page
    assert "Traceback" not in page and "URLconf" not in page


def test_missing_page_offers_login_to_a_stranger(client, settings):
    settings.DEBUG = False
    page = client.get("/no/such/page/").content.decode()
    assert f'href="{reverse("login")}"' in page
    assert f'href="{reverse("project-list")}"' not in page


def test_outsider_gets_the_same_404_page_for_a_project(client, team, settings):
    settings.DEBUG = False
    client.force_login(team.outsider)
    response = client.get(reverse("project-detail", args=[team.project.pk]))
    assert response.status_code == 404
    assert f'href="{reverse("project-list")}"' in response.content.decode()


def test_api_404_keeps_its_json_shape(client, settings):
    settings.DEBUG = False
    response = client.get("/api/v1/no-such-endpoint/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_server_error_page_renders_without_the_database(settings, team):
    settings.DEBUG = False
    settings.ROOT_URLCONF = __name__
    client = Client(raise_request_exception=False)
    client.force_login(team.viewer)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/boom/")
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong" in page
    assert "an error nobody expected" not in page  # no internals shown
    assert f'href="{reverse("overview")}"' in page
    assert f'href="{reverse("project-list")}"' in page
    # The only queries are the session's and the user's (the auth middleware), none the page's.
    assert all("auth_user" in q["sql"] or "django_session" in q["sql"] for q in queries)


def test_forbidden_page_offers_the_way_back(client, team, settings):
    settings.DEBUG = False
    client.force_login(team.viewer)
    response = client.post(reverse("member-list", args=[team.project.pk]), {})
    assert response.status_code == 403
    page = response.content.decode()
    assert "Not allowed" in page
    assert f'href="{reverse("project-list")}"' in page
