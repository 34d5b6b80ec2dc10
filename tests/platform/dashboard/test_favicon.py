"""/favicon.ico answers, and every page links the icon."""

from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_favicon_ico_redirects_to_the_icon_that_exists(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response["Location"].endswith("favicon.svg")
    icon = Path(settings.STATICFILES_DIRS[0]) / "favicon.svg"
    assert icon.read_text().startswith("<svg")


def test_pages_link_the_icon(client, team):
    client.force_login(team.viewer)
    page = client.get(reverse("project-list")).content.decode()
    assert '<link rel="icon" href="/static/favicon.svg"' in page
