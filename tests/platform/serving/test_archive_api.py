"""The archive's REST API: search, read, export, retention settings; roles and 404s."""

from __future__ import annotations

import json

import pytest

from tests.platform.serving.archive_helpers import archive, make_deployment, record

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(team):
    return make_deployment(team.project, team.engineer)


@pytest.fixture
def records(deployment):
    items = [
        record(0, subject="ann@example.com"),
        record(1, status="refused", response=None),
        record(2, caller={"token_id": 42, "user_id": None, "username": ""}),
        record(3, endpoint="completions"),
    ]
    archive(deployment, items)
    return items


def base(team, name="chat"):
    return f"/api/v1/projects/{team.project.pk}/deployments/{name}/requests/"


@pytest.mark.parametrize("role", ["owner", "engineer", "viewer", "compliance"])
def test_every_member_reads_the_archive(api, team, records, role):
    client = api(getattr(team, role))

    listing = client.get(base(team))
    detail = client.get(base(team) + records[0]["id"] + "/")

    assert listing.status_code == 200, listing.content
    assert listing.json()["count"] == 4
    assert detail.status_code == 200
    assert detail.json()["request"] == records[0]["request"]
    assert detail.json()["guardrails"] == records[0]["guardrails"]


def test_the_list_holds_index_rows_newest_first(api, team, records):
    rows = api(team.viewer).get(base(team)).json()["results"]

    assert [r["request_id"] for r in rows] == [r["id"] for r in reversed(records)]
    first = rows[-1]
    assert first["version"] == 1 and first["status"] == "ok"
    assert first["token_id"] == 3 and first["prompt_tokens"] == 5
    assert len(first["subject_hash"]) == 64
    assert "offset" not in first and "object_key" not in first


@pytest.mark.parametrize(
    "query,expected",
    [
        ("subject=ANN@example.com", [0]),
        ("status=refused", [1]),
        ("token_id=42", [2]),
        ("endpoint=completions", [3]),
        ("since=1790000002&until=1790000003", [2]),
        ("since=2026-09-21T14:13:22Z", [2, 3]),
        ("user_id=4&status=ok&endpoint=chat.completions", [0]),
    ],
)
def test_filters(api, team, records, query, expected):
    rows = api(team.viewer).get(base(team) + "?" + query).json()["results"]

    assert sorted(r["request_id"] for r in rows) == sorted(records[n]["id"] for n in expected)


@pytest.mark.parametrize(
    "query,field",
    [
        ("since=yesterday", "since"),
        ("token_id=-1", "token_id"),
        ("status=fine", "status"),
        ("endpoint=embeddings", "endpoint"),
        ("subject=a%00b", "subject"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(api, team, records, query, field):
    response = api(team.viewer).get(base(team) + "?" + query)

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_export_streams_full_records_as_jsonl_and_is_audited(api, team, records):
    from controlplane.audit.models import AuditEvent

    response = api(team.compliance).get(base(team) + "export/?status=ok")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert "attachment" in response["Content-Disposition"]
    lines = b"".join(response.streaming_content).decode().splitlines()
    exported = [json.loads(line) for line in lines]
    assert {r["id"] for r in exported} == {records[n]["id"] for n in (0, 2, 3)}
    assert all("response" in r and "timings" in r for r in exported)
    event = AuditEvent.objects.get(action="serving_archive.exported")
    assert event.actor_id == team.compliance.pk
    assert event.payload["filters"] == {"status": "ok"}


def test_an_export_by_subject_audits_the_hash_not_the_identifier(api, team, records):
    from controlplane.audit.models import AuditEvent

    response = api(team.viewer).get(base(team) + "export/?subject=ann@example.com")

    assert len(b"".join(response.streaming_content).splitlines()) == 1
    event = AuditEvent.objects.get(action="serving_archive.exported")
    assert "ann@example.com" not in json.dumps(event.payload)
    assert len(event.payload["filters"]["subject_hash"]) == 64


def test_another_projects_user_gets_404_everywhere(api, team, records):
    client = api(team.outsider)

    for url in [
        base(team),
        base(team) + records[0]["id"] + "/",
        base(team) + "export/",
        f"/api/v1/projects/{team.project.pk}/serving-settings/",
    ]:
        assert client.get(url).status_code == 404, url
    patch = client.patch(
        f"/api/v1/projects/{team.project.pk}/serving-settings/",
        {"retention_days": 1},
        format="json",
    )
    assert patch.status_code == 404


def test_an_unknown_deployment_or_request_is_404(api, team, records):
    client = api(team.viewer)

    assert client.get(base(team, "nope")).status_code == 404
    missing = client.get(base(team) + "0" * 32 + "/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_a_purged_record_is_404_and_a_store_outage_503(api, team, records, monkeypatch):
    from controlplane.serving.models import ArchiveObject
    from controlplane.storage import object_store
    from workers.storage import StorageError

    client = api(team.viewer)
    url = base(team) + records[0]["id"] + "/"

    def down(*args, **kwargs):
        raise StorageError("connection refused (test)")

    with monkeypatch.context() as patched:
        patched.setattr(type(object_store()), "get_range", down)
        outage = client.get(url)
    assert outage.status_code == 503
    assert outage["Retry-After"]

    object_store().delete(ArchiveObject.objects.get().object_key)
    assert client.get(url).status_code == 404


def test_serving_settings_default_and_owner_update_is_audited(api, team):
    from controlplane.audit.models import AuditEvent

    url = f"/api/v1/projects/{team.project.pk}/serving-settings/"
    assert api(team.viewer).get(url).json() == {"retention_days": 30}

    response = api(team.owner).patch(url, {"retention_days": 7}, format="json")

    assert response.status_code == 200 and response.json() == {"retention_days": 7}
    assert api(team.compliance).get(url).json() == {"retention_days": 7}
    event = AuditEvent.objects.get(action="serving_settings.updated")
    assert event.actor_id == team.owner.pk
    assert event.payload == {"retention_days": 7, "previous_retention_days": 30}


@pytest.mark.parametrize("role", ["engineer", "viewer", "compliance"])
def test_only_owners_change_the_retention(api, team, role):
    url = f"/api/v1/projects/{team.project.pk}/serving-settings/"

    response = api(getattr(team, role)).patch(url, {"retention_days": 7}, format="json")

    assert response.status_code == 403


@pytest.mark.parametrize("body", [{"retention_days": 0}, {"retention_days": 3651}, {"x": 1}, {}])
def test_a_bad_retention_is_a_400(api, team, body):
    url = f"/api/v1/projects/{team.project.pk}/serving-settings/"

    response = api(team.owner).patch(url, body, format="json")

    assert response.status_code == 400


def test_anonymous_gets_401_and_a_token_without_read_scope_403(api, team, records):
    assert api().get(base(team)).status_code == 401

    write_only = api(team.owner, scopes=["api:write"])

    assert write_only.get(base(team)).status_code == 403
    assert write_only.get(base(team) + "export/").status_code == 403
