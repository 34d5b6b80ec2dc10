"""The archive's pages render for every role; another project's user gets 404."""

from __future__ import annotations

import pytest

from tests.platform.serving.archive_helpers import archive, make_deployment, record

pytestmark = pytest.mark.django_db

ROLES = ["owner", "engineer", "viewer", "compliance"]


@pytest.fixture
def records(team):
    deployment = make_deployment(team.project, team.engineer)
    items = [
        record(0, subject="ann@example.com", caller={"token_id": None, "user_id": team.viewer.pk}),
        record(
            1,
            status="refused",
            response=None,
            error={"status": 400, "code": "guardrail_refused", "message": "PII in the prompt"},
        ),
        record(
            2,
            endpoint="images.generations",
            request={"prompt": "a digit seven", "n": 1},
            response={"created": 1, "data": [{"b64_json": "iVBORw0KGgo="}]},
        ),
        record(3, response={"choices": [{"text": "x" * 5000}]}),
    ]
    archive(deployment, items)
    return items


def client_of(client, user):
    client.force_login(user)
    return client


def list_url(team, name="chat"):
    return f"/projects/{team.project.pk}/deployments/{name}/requests/"


@pytest.mark.parametrize("role", ROLES)
def test_the_request_list_renders_for_every_role(client, team, records, role):
    response = client_of(client, getattr(team, role)).get(list_url(team))

    assert response.status_code == 200
    page = response.content.decode()
    for item in records:
        assert item["id"][:12] in page
    assert "export.jsonl" in page
    assert "viewer" in page  # the caller's username
    assert "<script" not in page.split("</head>")[1]  # no inline scripts (CSP)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_each_kind_of_record_renders_for_every_role(client, team, records, role, n):
    url = list_url(team) + records[n]["id"] + "/"

    response = client_of(client, getattr(team, role)).get(url)

    assert response.status_code == 200
    page = response.content.decode()
    assert records[n]["id"] in page
    assert 'id="guardrails"' in page and "redacted" in page
    if n == 1:
        assert "guardrail_refused" in page and "No answer" in page
    if n == 2:
        assert 'src="data:image/png;base64,iVBORw0KGgo="' in page
    if n == 3:
        assert "(5,000 characters)" in page and "x" * 2001 not in page


def test_the_search_form_filters_the_table(client, team, records):
    client_of(client, team.compliance)

    by_subject = client.get(list_url(team) + "?subject=ANN@example.com").content.decode()
    by_status = client.get(list_url(team) + "?status=refused").content.decode()

    assert records[0]["id"][:12] in by_subject and records[1]["id"][:12] not in by_subject
    assert records[1]["id"][:12] in by_status and records[0]["id"][:12] not in by_status
    assert "subject=ANN%40example.com" in by_subject  # the export link keeps the search


def test_a_bad_filter_is_shown_next_to_the_form(client, team, records):
    response = client_of(client, team.viewer).get(list_url(team) + "?since=soon&token_id=x")

    assert response.status_code == 200
    page = response.content.decode()
    assert "since: use an ISO 8601 time" in page and "token_id: must be a whole number" in page


def test_the_export_link_downloads_jsonl(client, team, records):
    import json

    response = client_of(client, team.viewer).get(
        list_url(team) + "export.jsonl?endpoint=images.generations"
    )

    assert response.status_code == 200
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [records[2]["id"]]


def test_a_purged_record_says_so(client, team, records):
    from controlplane.serving.models import ArchiveObject
    from controlplane.storage import object_store

    object_store().delete(ArchiveObject.objects.get().object_key)

    response = client_of(client, team.viewer).get(list_url(team) + records[0]["id"] + "/")

    assert response.status_code == 200
    assert "no longer in the archive" in response.content.decode()


def test_another_projects_user_gets_404(client, team, records):
    client_of(client, team.outsider)

    for url in [
        list_url(team),
        list_url(team) + records[0]["id"] + "/",
        list_url(team) + "export.jsonl",
    ]:
        assert client.get(url).status_code == 404, url


def test_unknown_deployments_and_requests_are_404(client, team, records):
    client_of(client, team.viewer)

    assert client.get(list_url(team, "nope")).status_code == 404
    assert client.get(list_url(team) + "f" * 32 + "/").status_code == 404


def test_anonymous_is_sent_to_the_login(client, team, records):
    response = client.get(list_url(team))

    assert response.status_code == 302 and "login" in response["Location"]
