"""Every error under /api/ answers in the one JSON shape; pages keep their HTML error pages.

Covers issue 11 (nested errors as Python reprs, HTML for oversized bodies and unknown
paths) and issue 12 item 7 (database and storage errors as HTML 500 pages).
"""

import logging

import pytest
from django.db import OperationalError

from workers.storage import StorageError

pytestmark = pytest.mark.django_db


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    return response.json()["error"]


@pytest.fixture
def dataset(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project, actor=team.engineer, name="Text", slug="text", kind="text"
    )


def test_nested_errors_are_dotted_fields_not_reprs(api, team, dataset):
    url = f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/"
    body = {"files": ["not an object", {"name": "a.txt", "size": 0, "sha256": "xyz"}]}
    error = _error(api(team.engineer).post(url, body, format="json"), 400)
    assert error["fields"] == {
        "files.0": ["expected a JSON object"],
        "files.1.size": ["Ensure this value is greater than or equal to 1."],
        "files.1.sha256": ["64 hex digits"],
    }
    assert "ErrorDetail" not in str(error) and "{" not in error["message"]


def test_nested_job_param_errors_are_dotted(api, team):
    url = f"/api/v1/projects/{team.project.pk}/jobs/"
    body = {"kind": "pretrain", "params": {"optim": {"lr": "fast"}, "train": {"max_iters": 0}}}
    fields = _error(api(team.engineer).post(url, body, format="json"), 400)["fields"]
    assert fields["params.optim.lr"] == ["must be a number"]
    assert fields["params.train.max_iters"] == ["must be between 1 and 1e+07"]


def test_body_over_the_size_limit_is_a_json_413(api, team, settings):
    from controlplane.projects.models import Project

    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    before = Project.objects.count()
    body = b'{"name": "' + b"x" * 5000 + b'", "slug": "big"}'
    response = api(team.owner).generic("POST", "/api/v1/projects/", body, "application/json")
    assert _error(response, 413)["code"] == "too_large"
    assert Project.objects.count() == before


def test_unknown_api_path_is_a_json_404_and_a_page_stays_html(api, team, client):
    error = _error(api(team.owner).get("/api/v1/no-such-thing/"), 404)
    assert "/api/v1/no-such-thing/" in error["message"]
    _error(client.get("/api/v1/projects/1/jobs/not-a-number/"), 404)
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_database_outage_in_a_view_is_a_503_with_retry_after(api, team, monkeypatch):
    import controlplane.projects.api as projects_api

    def unavailable(user, organisation=None):
        raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")

    monkeypatch.setattr(projects_api, "project_list_for", unavailable)
    response = api(team.owner).get("/api/v1/projects/")
    assert _error(response, 503)["code"] == "unavailable"
    assert int(response["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("cause", "status"),
    [(ConnectionRefusedError(111, "Connection refused"), 503), (None, 502)],
    ids=["unreachable", "refused"],
)
def test_storage_errors_in_a_view_are_503_or_502(api, team, monkeypatch, cause, status):
    import controlplane.uploads.services as upload_services
    from controlplane.uploads.models import Upload

    def failing_store(**kwargs):
        raise StorageError("put of projects/1/uploads/x failed") from cause

    monkeypatch.setattr(upload_services, "upload_create", failing_store)
    url = f"/api/v1/projects/{team.project.pk}/uploads/"
    with open(__file__, "rb") as handle:
        response = api(team.engineer).post(url, {"file": handle}, format="multipart")
    error = _error(response, status)
    assert error["code"] == ("unavailable" if status == 503 else "bad_gateway")
    assert ("Retry-After" in response) == (status == 503)
    assert not Upload.objects.exists()


def test_an_unexpected_error_is_a_logged_json_500(api, team, monkeypatch, caplog):
    import controlplane.projects.api as projects_api

    def broken(user, organisation=None):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(projects_api, "project_list_for", broken)
    with caplog.at_level(logging.ERROR, logger="controlplane.api"):
        response = api(team.owner).get("/api/v1/projects/")
    error = _error(response, 500)
    assert error["code"] == "server_error" and "a bug" not in error["message"]
    logged = [r for r in caplog.records if r.name == "controlplane.api"]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is ZeroDivisionError


def test_a_database_outage_before_the_view_is_a_json_503(rf):
    """Middleware errors reach Django's handler500, which sees the error it is handling."""
    from controlplane.api.handlers import server_error

    request = rf.get("/api/v1/projects/")
    try:
        raise OperationalError("the database system is shutting down")
    except OperationalError:
        response = server_error(request)
    assert response.status_code == 503 and response["Retry-After"]
    page = server_error(rf.get("/projects/"))
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page=abc", "page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=1e3", "page"),
        ("page=%00", "page"),
        ("page_size=abc", "page_size"),
        ("page_size=0", "page_size"),
        ("page_size=99999999999999999999999", "page_size"),
    ],
)
def test_malformed_pagination_is_a_400_naming_the_parameter(api, team, query, field):
    error = _error(api(team.owner).get(f"/api/v1/projects/?{query}"), 400)
    assert field in error["fields"]


def test_pagination_caps_page_size_and_404s_past_the_last_page(api, team):
    client = api(team.owner)
    body = client.get("/api/v1/projects/", {"page_size": 10**9}).json()
    assert body["count"] == 1 and len(body["results"]) == 1
    assert "last page is 1" in _error(client.get("/api/v1/projects/?page=2"), 404)["message"]
    assert client.get("/api/v1/projects/?page=last").status_code == 200


def test_a_race_decided_by_a_unique_constraint_is_a_409(api, team, monkeypatch):
    """Two requests pass member_add's "already a member?" check at once; the database's
    unique constraint refuses the second insert. That is a conflict, not a server error."""
    from django.db import transaction

    import controlplane.projects.api as projects_api
    from controlplane.projects.models import Membership

    def racing_member_add(*, project, user, role, actor):
        Membership.objects.create(project=project, user=user, role=role)  # the other request
        with transaction.atomic():
            return Membership.objects.create(project=project, user=user, role=role)

    monkeypatch.setattr(projects_api, "member_add", racing_member_add)
    url = f"/api/v1/projects/{team.project.pk}/members/"
    body = {"username": team.outsider.username, "role": "viewer"}
    response = api(team.owner).post(url, body, format="json")
    assert _error(response, 409)["code"] == "conflict"
    assert Membership.objects.filter(project=team.project, user=team.outsider).count() == 1


@pytest.mark.parametrize("debug", [False, True])
def test_a_write_without_the_trailing_slash_is_a_json_404(api, team, settings, debug):
    from controlplane.projects.models import Project

    settings.DEBUG = debug
    before = Project.objects.count()
    body = {"name": "x", "slug": "no-slash"}
    error = _error(api(team.owner).post("/api/v1/projects", body, format="json"), 404)
    assert "/api/v1/projects/" in error["message"]
    assert Project.objects.count() == before
