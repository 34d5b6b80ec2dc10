"""API latency per route, method and status class, counted by the middleware."""

from __future__ import annotations

import pytest

from tests.platform.metrics.conftest import sample

pytestmark = pytest.mark.django_db

NAME = "controlplane_http_request_duration_seconds"


def test_requests_through_the_app_are_counted_by_route(scrape, client, api, team):
    def count(**labels) -> float:
        return sample(scrape(), NAME, "_count", **labels) or 0

    health = {"route": "/healthz", "method": "GET", "status": "2xx"}
    project = {"route": "/api/v1/projects/<int:project_id>/", "method": "GET", "status": "2xx"}
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "4xx"}
    before = {
        key: count(**labels) for key, labels in (("h", health), ("p", project), ("u", unmatched))
    }

    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    owner = api(team.owner)
    assert owner.get(f"/api/v1/projects/{team.project.pk}/").status_code == 200
    assert (
        owner.get(f"/api/v1/projects/{team.other_project.pk}/").status_code == 404
    )  # another tenant: 4xx
    assert client.get("/no/such/page/at/all").status_code == 404

    assert count(**health) == before["h"] + 3
    assert count(**project) == before["p"] + 1  # ids never become labels: one route
    assert count(**unmatched) == before["u"] + 1
    assert count(route="/api/v1/projects/<int:project_id>/", method="GET", status="4xx") >= 1


def test_an_unknown_method_is_one_label(scrape, client):
    client.generic("BREW", "/healthz")
    families = scrape()
    methods = {s.labels["method"] for s in families[NAME].samples}
    assert "other" in methods and "BREW" not in methods


def test_a_latency_that_cannot_be_written_never_fails_the_request(client, monkeypatch):
    from controlplane.metrics import middleware

    def disk_full(**labels):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(middleware.HTTP_REQUEST_DURATION, "labels", disk_full)
    assert client.get("/healthz").status_code == 200


def test_every_answer_says_its_server_time(client, team):
    """`Server-Timing: app;dur=MS` (shown by browsers' developer tools; the browser tests
    assert pages stay fast with it)."""
    import re

    client.force_login(team.viewer)
    for path in ("/healthz", f"/projects/{team.project.pk}/", "/no/such/page"):
        header = client.get(path).headers["Server-Timing"]
        match = re.fullmatch(r"app;dur=(\d+\.\d)", header)
        assert match and 0 < float(match.group(1)) < 60_000, (path, header)
